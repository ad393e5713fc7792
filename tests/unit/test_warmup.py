"""Model warmup without sockets: the requests each sample makes, what runs and how often, and
the failures (tests/differential/test_warmup_vs_triton.py compares with tritonserver)."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from google.protobuf import text_format

from server.backends.base import ModelInstance, RequestOutputs, Timing
from server.errors import Code, ServerError, internal
from server.protocol.generated import model_config_pb2 as mc
from server.repository.view import build_view
from server.repository.warmup import warmup
from server.types import InferRequest


class Recorder(ModelInstance):
    """Records each execution's requests; fails them when told to."""

    def __init__(self, fail: bool = False) -> None:
        self.runs: list[list[InferRequest]] = []
        self.fail = fail

    def execute(self, requests: Sequence[InferRequest], timing: Timing) -> list[RequestOutputs]:
        self.runs.append(list(requests))
        if self.fail:
            return [internal("model said no")] * len(requests)
        return [{} for _ in requests]


def _config(text: str, max_batch_size: int = 0) -> Any:
    config = text_format.Parse(text, mc.ModelConfig())
    config.name = "m"
    config.max_batch_size = max_batch_size
    return config


IO = 'input [ { name: "X" data_type: %s dims: [ %s ] } ]\n'


def _sample(data: str, datatype: str = "TYPE_FP32", dims: str = "3", extra: str = "") -> str:
    return (
        f'model_warmup [ {{ name: "s" {extra} inputs {{ key: "X" value: {{ data_type: {datatype} '
        f"dims: [ {dims} ] {data} }} }} }} ]"
    )


def _run(config: Any, instance: Recorder, model_dir: Path = Path(".")) -> None:
    warmup(config, build_view(config, "1", {}), instance, "m_0", model_dir)


def test_zero_data_with_batching_makes_one_request_per_item() -> None:
    config = _config(IO % ("TYPE_FP32", "3") + _sample("zero_data: true", extra="batch_size: 2"), 4)
    instance = Recorder()
    _run(config, instance)
    assert len(instance.runs) == 1 and len(instance.runs[0]) == 2
    for request in instance.runs[0]:
        (tensor,) = request.inputs
        assert tensor.shape == (1, 3) and tensor.datatype == "FP32"
        np.testing.assert_array_equal(tensor.data, np.zeros((1, 3), np.float32))
        assert request.batch_size == 1  # checked as a client request is


def test_count_and_sample_order() -> None:
    text = IO % ("TYPE_INT32", "4") + (
        'model_warmup [ { name: "a" batch_size: 1 count: 3 inputs { key: "X" value: { '
        "data_type: TYPE_INT32 dims: [ 4 ] random_data: true } } }, "
        '{ name: "b" batch_size: 1 inputs { key: "X" value: { data_type: TYPE_INT32 '
        "dims: [ 4 ] zero_data: true } } } ]"
    )
    instance = Recorder()
    _run(_config(text), instance)
    assert len(instance.runs) == 4  # three of "a", then "b" once (count 0 runs once)
    assert all(run[0].inputs[0].data.dtype == np.int32 for run in instance.runs)
    assert not instance.runs[-1][0].inputs[0].data.any()


def test_batch_size_zero_runs_nothing_and_strings_are_empty() -> None:
    skipped = _config(
        IO % ("TYPE_FP32", "3") + _sample("zero_data: true", extra="batch_size: 0"), 4
    )
    instance = Recorder()
    _run(skipped, instance)
    assert instance.runs == []
    strings = _config(
        IO % ("TYPE_STRING", "2")
        + _sample("random_data: true", "TYPE_STRING", "2", "batch_size: 1")
    )
    _run(strings, instance)
    assert instance.runs[0][0].inputs[0].data.tolist() == [b"", b""]


def test_input_data_file(tmp_path: Path) -> None:
    (tmp_path / "warmup").mkdir()
    (tmp_path / "warmup" / "in.bin").write_bytes(np.array([7, 9, 11], np.int32).tobytes())
    config = _config(
        IO % ("TYPE_INT32", "2")
        + _sample('input_data_file: "in.bin"', "TYPE_INT32", "2", "batch_size: 1")
    )
    instance = Recorder()
    _run(config, instance, tmp_path)
    assert instance.runs[0][0].inputs[0].data.tolist() == [7, 9]
    short = _config(
        IO % ("TYPE_INT32", "4")
        + _sample('input_data_file: "in.bin"', "TYPE_INT32", "4", "batch_size: 1")
    )
    with pytest.raises(ServerError) as err:
        _run(short, Recorder(), tmp_path)
    assert err.value.message == (
        "[request id: <id_unknown>] warmup setting expects 16 bytes, but the data provided "
        "from in.binonly has 12 bytes"
    )


@pytest.mark.parametrize(
    ("text", "max_batch_size", "message"),
    [
        (
            IO % ("TYPE_FP32", "-1") + _sample("zero_data: true", dims="-1", extra="batch_size: 1"),
            0,
            "warmup setting expects all variable-size dimensions are specified for input 'X'",
        ),
        (
            IO % ("TYPE_FP32", "3") + _sample("", extra="batch_size: 1"),
            0,
            "[request id: <id_unknown>] warmup setting expects input 'X' to have "
            "input_data_type set",
        ),
        (
            IO % ("TYPE_FP32", "3") + _sample("zero_data: true", extra="batch_size: 2"),
            0,
            "failed to run warmup sample 's': batch size 2 for 'm_0', max allowed is 0; "
            "batch size 2 for 'm_0', max allowed is 0; ",
        ),
        (
            IO % ("TYPE_STRING", "3") + _sample("zero_data: true", extra="batch_size: 1"),
            0,
            "[request id: <id_unknown>] inference input 'X' data-type is 'FP32', but model 'm' "
            "expects 'BYTES'",
        ),
        (
            IO % ("TYPE_FP32", "3")
            + _sample("zero_data: true", extra="batch_size: 1").replace('key: "X"', 'key: "Y"'),
            0,
            "[request id: <id_unknown>] expected 1 inputs but got 0 inputs for model 'm'. Got "
            "input(s) [], but missing required input(s) ['X']. Please provide all required "
            "input(s).",
        ),
    ],
)
def test_samples_that_fail_the_load(text: str, max_batch_size: int, message: str) -> None:
    with pytest.raises(ServerError) as err:
        _run(_config(text, max_batch_size), Recorder())
    assert err.value.code == Code.INVALID_ARG
    assert err.value.message == message


def test_a_failing_execution_fails_the_load() -> None:
    config = _config(IO % ("TYPE_FP32", "3") + _sample("zero_data: true", extra="batch_size: 1"))
    with pytest.raises(ServerError) as err:
        _run(config, Recorder(fail=True))
    assert err.value.message == "failed to run warmup sample 's': model said no; "


async def test_a_failed_warmup_fails_the_version_and_unloads_its_instances(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from server.devices import FakeDeviceLayer
    from server.repository.manager import ModelManager
    from server.scheduler import create_scheduler
    from tests.models import write_onnx_add_sub

    class Unloadable(Recorder):
        unloaded = False

        def unload(self) -> None:
            self.unloaded = True

    loaded: list[Unloadable] = []

    class Backend:
        name = "onnxruntime"

        def autocomplete(self, config: Any, model_dir: Path, version_dir: Path | None) -> None:
            pass

        def gpu_unusable_reason(self) -> str | None:
            return None

        def load(self, config: Any, view: Any, version_dir: Path, instance: Any) -> Recorder:
            recorder = Unloadable()
            loaded.append(recorder)
            return recorder

    monkeypatch.setattr("server.repository.manager.get_backend", lambda name: Backend())
    sample = (
        'model_warmup [ { name: "s" batch_size: 1 inputs { key: "INPUT0" value: { '
        "data_type: TYPE_FP32 dims: [ 16 ] zero_data: true } } } ]"
    )
    write_onnx_add_sub(
        tmp_path, "m", config_extra="instance_group [ { kind: KIND_CPU count: 2 } ]\n" + sample
    )
    manager = ModelManager([tmp_path], create_scheduler, devices=FakeDeviceLayer())
    with pytest.raises(ServerError) as err:
        await manager.load("m")
    assert "missing required input(s) ['INPUT1']" in err.value.message
    # The first instance failed its warmup: it was unloaded and the second never loaded.
    assert len(loaded) == 1 and loaded[0].unloaded
    await manager.unload_all(drain_timeout=1.0)
