"""The Python backend without a server: auto-complete, loading, executing batches, and the
decoupled response sender."""

from __future__ import annotations

import asyncio
import json
import sys
import textwrap
import threading
from pathlib import Path

import numpy as np
import pytest

from server.backends.base import InstanceSpec, Timing
from server.backends.python import pb_utils as pb
from server.backends.python.backend import PythonBackend
from server.backends.python.request import InferenceResponseSender
from server.errors import ServerError
from server.repository.config import config_to_json_dict, load_model_config
from server.repository.view import build_view
from server.types import InferInput, InferRequest, InferResponse

CPU = InstanceSpec("m_0_0", "m_0", "CPU")


def _write(tmp_path: Path, source: str, config: str | None) -> Path:
    model_dir = tmp_path / "m"
    (model_dir / "1").mkdir(parents=True)
    (model_dir / "1" / "model.py").write_text(textwrap.dedent(source))
    if config is not None:
        (model_dir / "config.pbtxt").write_text(textwrap.dedent(config))
    return model_dir


def _load(model_dir: Path):  # type: ignore[no-untyped-def]
    backend = PythonBackend()
    config = load_model_config(
        model_dir, "m", autocomplete=lambda c, d: backend.autocomplete(c, d, d / "1")
    )
    view = build_view(config, "1", {})
    return config, view, backend.load(config, view, model_dir / "1", CPU)


def _request(value: int) -> InferRequest:
    data = np.array([value], dtype=np.int32)
    return InferRequest("m", inputs=[InferInput("IN", "INT32", (1,), data)], batch_size=1)


IDENTITY_CONFIG = """
    backend: "python"
    input [ { name: "IN", data_type: TYPE_INT32, dims: [ 1 ] } ]
    output [ { name: "OUT", data_type: TYPE_INT32, dims: [ 1 ] } ]
"""


# --- the auto-complete object -------------------------------------------------------------
def test_model_config_merges_and_rejects_conflicts() -> None:
    config = pb.ModelConfig(
        {
            "name": "m",
            "max_batch_size": 0,
            "input": [{"name": "A", "data_type": "TYPE_FP32", "dims": [2]}],
        }
    )
    config.add_input({"name": "A", "data_type": "TYPE_FP32", "dims": [2]})
    config.add_input({"name": "B", "data_type": "TYPE_INT64", "dims": [-1], "optional": True})
    config.add_output({"name": "C", "data_type": "TYPE_STRING", "dims": [1]})
    config.set_max_batch_size(8)
    config.set_dynamic_batching()
    config.set_model_transaction_policy({"decoupled": True})
    result = config.as_dict()
    assert [i["name"] for i in result["input"]] == ["A", "B"]
    assert result["input"][1]["optional"] is True
    assert result["output"] == [{"name": "C", "data_type": "TYPE_STRING", "dims": [1]}]
    assert result["max_batch_size"] == 8
    assert result["dynamic_batching"] == {}
    assert result["model_transaction_policy"] == {"decoupled": True}
    with pytest.raises(ValueError, match="data_type"):
        config.add_input({"name": "A", "data_type": "TYPE_INT32", "dims": [2]})
    with pytest.raises(ValueError, match="dims"):
        config.add_input({"name": "A", "data_type": "TYPE_FP32", "dims": [3]})
    with pytest.raises(ValueError, match="max_batch_size"):
        config.set_max_batch_size(4)
    with pytest.raises(ValueError, match="must specify 'dims'"):
        config.add_output({"name": "D", "data_type": "TYPE_FP32"})
    with pytest.raises(ValueError, match="unknown data_type"):
        config.add_output({"name": "D", "data_type": "FP32", "dims": [1]})


def test_autocomplete_hook_fills_a_missing_config(tmp_path: Path) -> None:
    source = """
        import triton_python_backend_utils as pb_utils

        class TritonPythonModel:
            @staticmethod
            def auto_complete_config(auto_complete_model_config):
                auto_complete_model_config.add_input({"name": "X", "data_type": "TYPE_UINT8", "dims": [3]})
                auto_complete_model_config.add_output({"name": "Y", "data_type": "TYPE_UINT8", "dims": [3]})
                auto_complete_model_config.set_max_batch_size(2)
                return auto_complete_model_config

            def execute(self, requests):
                return []
    """
    config, view, _ = _load(_write(tmp_path, source, None))
    as_json = config_to_json_dict(config)
    assert as_json["backend"] == "python"
    assert as_json["max_batch_size"] == 2
    assert [(t["name"], t["data_type"], t["dims"]) for t in as_json["input"]] == [
        ("X", "TYPE_UINT8", [3])
    ]
    assert view.outputs["Y"].datatype == "UINT8"


def test_autocomplete_error_names_the_model(tmp_path: Path) -> None:
    source = """
        class TritonPythonModel:
            @staticmethod
            def auto_complete_config(auto_complete_model_config):
                auto_complete_model_config.set_max_batch_size(-1)
                return auto_complete_model_config
    """
    with pytest.raises(ServerError, match="auto_complete_config of model 'm' failed: ValueError"):
        _load(_write(tmp_path, source, None))


# --- loading and executing ---------------------------------------------------------------
def test_initialize_args_and_failures(tmp_path: Path) -> None:
    source = """
        import json

        class TritonPythonModel:
            def initialize(self, args):
                if json.loads(args["model_config"])["parameters"]:
                    raise RuntimeError("refusing to start")
                self.args = args
    """
    model_dir = _write(tmp_path, source, IDENTITY_CONFIG)
    _, _, instance = _load(model_dir)
    args = instance._model.args  # type: ignore[attr-defined]
    assert args["model_name"] == "m" and args["model_version"] == "1"
    assert args["model_instance_kind"] == "CPU" and args["model_instance_name"] == "m_0_0"
    assert args["model_repository"] == str(model_dir)
    (model_dir / "config.pbtxt").write_text(
        textwrap.dedent(IDENTITY_CONFIG) + 'parameters { key: "x" value { string_value: "1" } }\n'
    )
    with pytest.raises(ServerError) as caught:
        _load(model_dir)
    # As Triton's stub words it: the error, then the model's own frames only.
    assert caught.value.message == (
        f"RuntimeError: refusing to start\n\nAt:\n  {model_dir / '1' / 'model.py'}(7): initialize\n"
    )


def test_batch_outcomes_are_per_request(tmp_path: Path) -> None:
    source = """
        import triton_python_backend_utils as pb_utils

        class TritonPythonModel:
            def execute(self, requests):
                out = []
                for r in requests:
                    v = pb_utils.get_input_tensor_by_name(r, "IN").as_numpy()
                    if v[0] < 0:
                        raise ValueError("negative")
                    if v[0] == 0:
                        out.append(pb_utils.InferenceResponse(error=pb_utils.TritonError("zero")))
                    else:
                        out.append(pb_utils.InferenceResponse([pb_utils.Tensor("OUT", v * len(requests))]))
                return out
    """
    _, _, instance = _load(_write(tmp_path, source, IDENTITY_CONFIG))
    timing = Timing()
    results = instance.execute([_request(2), _request(0), _request(5)], timing)
    assert [r["OUT"].tolist() if isinstance(r, dict) else r.message for r in results] == [
        [6],
        "zero",
        [15],
    ]
    assert timing.input_end_ns and timing.infer_end_ns >= timing.input_end_ns
    failed = instance.execute([_request(1), _request(-1)], Timing())
    assert all(isinstance(r, ServerError) for r in failed)
    assert "message: ValueError: negative" in failed[0].message  # type: ignore[union-attr]
    # The instance keeps serving after a failed batch.
    assert instance.execute([_request(4)], Timing())[0]["OUT"].tolist() == [4]  # type: ignore[index]


def test_wrong_number_of_responses(tmp_path: Path) -> None:
    source = """
        class TritonPythonModel:
            def execute(self, requests):
                return []
    """
    _, _, instance = _load(_write(tmp_path, source, IDENTITY_CONFIG))
    results = instance.execute([_request(1), _request(2)], Timing())
    assert all(isinstance(r, ServerError) and "list of 2 responses" in r.message for r in results)


def test_send_in_default_mode(tmp_path: Path) -> None:
    source = """
        import triton_python_backend_utils as pb_utils

        class TritonPythonModel:
            def execute(self, requests):
                for r in requests:
                    v = pb_utils.get_input_tensor_by_name(r, "IN").as_numpy()
                    r.get_response_sender().send(
                        pb_utils.InferenceResponse([pb_utils.Tensor("OUT", v + 1)]),
                        flags=pb_utils.TRITONSERVER_RESPONSE_COMPLETE_FINAL,
                    )
                return None
    """
    _, _, instance = _load(_write(tmp_path, source, IDENTITY_CONFIG))
    assert instance.execute([_request(1)], Timing())[0]["OUT"].tolist() == [2]  # type: ignore[index]


# --- the decoupled response sender -----------------------------------------------------------
async def test_sender_streams_from_another_thread() -> None:
    loop = asyncio.get_running_loop()
    request = _request(0)
    request.future = loop.create_future()
    request.response_queue = asyncio.Queue()

    def convert(response: pb.InferenceResponse, final: bool) -> InferResponse | ServerError:
        tensor = response.output_tensors()[0]
        return InferResponse("m", "1", [], parameters={"v": int(tensor.as_numpy()[0])}, final=final)

    sender = InferenceResponseSender(request, True, convert)

    def produce() -> None:
        for value in (7, 8):
            sender.send(pb.InferenceResponse([pb.Tensor("OUT", np.array([value], np.int32))]))
        sender.send(flags=pb.TRITONSERVER_RESPONSE_COMPLETE_FINAL)

    worker = threading.Thread(target=produce)
    worker.start()
    received = []
    while (item := await asyncio.wait_for(request.response_queue.get(), 10)) is not None:
        assert isinstance(item, InferResponse)
        received.append(item.parameters["v"])
    worker.join()
    assert received == [7, 8]
    with pytest.raises(pb.TritonModelException, match="closed"):
        sender.send(pb.InferenceResponse(), flags=pb.TRITONSERVER_RESPONSE_COMPLETE_FINAL)
    with pytest.raises(pb.TritonModelException):
        InferenceResponseSender(request, True, convert).send(None, 0)


def test_config_json_given_to_initialize_is_tritons(tmp_path: Path) -> None:
    source = """
        class TritonPythonModel:
            def initialize(self, args):
                self.config = args["model_config"]
    """
    config, _, instance = _load(_write(tmp_path, source, IDENTITY_CONFIG))
    assert json.loads(instance._model.config) == config_to_json_dict(config)  # type: ignore[attr-defined]


def test_model_module_is_registered_while_loaded(tmp_path: Path) -> None:
    source = """
        import pickle
        import sys
        from dataclasses import dataclass

        @dataclass
        class Settings:
            scale: int = 3

        class TritonPythonModel:
            def initialize(self, args):
                self.settings = pickle.loads(pickle.dumps(Settings()))
                self.module_name = __name__
    """
    _, _, instance = _load(_write(tmp_path, source, IDENTITY_CONFIG))
    name = instance._model.module_name  # type: ignore[attr-defined]
    assert instance._model.settings.scale == 3  # type: ignore[attr-defined]
    assert name in sys.modules
    instance.unload()
    assert name not in sys.modules


def test_model_files_are_forgotten_at_unload(tmp_path: Path) -> None:
    source = """
        import pickle
        import sys

        import helper

        class TritonPythonModel:
            def initialize(self, args):
                self.point = pickle.loads(pickle.dumps(helper.Point(2)))
                self.helper_name = helper.__name__
    """
    model_dir = _write(tmp_path, source, IDENTITY_CONFIG)
    (model_dir / "1" / "helper.py").write_text(
        "from dataclasses import dataclass\n\n@dataclass\nclass Point:\n    x: int\n"
    )
    folders = [str(model_dir / "1"), str(model_dir)]
    _, _, instance = _load(model_dir)
    model = instance._model
    # A class of the model's own file pickles and round-trips by its module's name.
    assert model.point.x == 2  # type: ignore[attr-defined]
    assert model.helper_name in sys.modules  # type: ignore[attr-defined]
    assert "helper" not in sys.modules
    assert all(folder in sys.path for folder in folders)
    instance.unload()
    assert model.helper_name not in sys.modules  # type: ignore[attr-defined]
    assert not any(folder in sys.path for folder in folders)


def test_inputs_are_writable_and_pass_through_without_copies(tmp_path: Path) -> None:
    source = """
        import triton_python_backend_utils as pb_utils

        class TritonPythonModel:
            def initialize(self, args):
                self.seen = []

            def execute(self, requests):
                out = []
                for r in requests:
                    x = pb_utils.get_input_tensor_by_name(r, "IN").as_numpy()
                    self.seen.append(x)
                    x += 1
                    out.append(pb_utils.InferenceResponse([pb_utils.Tensor("OUT", x)]))
                return out
    """
    _, _, instance = _load(_write(tmp_path, source, IDENTITY_CONFIG))
    model = instance._model
    received = bytes(np.array([5], dtype=np.int32).tobytes())
    read_only = np.frombuffer(received, dtype=np.int32)  # as binary and gRPC inputs arrive
    writable = np.frombuffer(bytearray(received), dtype=np.int32)  # as large ones do
    requests = [
        InferRequest("m", inputs=[InferInput("IN", "INT32", (1,), data)], batch_size=1)
        for data in (read_only, writable)
    ]
    results = instance.execute(requests, Timing())
    assert [r["OUT"].tolist() for r in results] == [[6], [6]]  # type: ignore[index]
    first, second = model.seen  # type: ignore[attr-defined]
    # A read-only input is the model's own copy; the request's bytes are untouched.
    assert not np.shares_memory(first, read_only) and read_only.tolist() == [5]
    # A writable one is handed over as it is.
    assert np.shares_memory(second, writable)
    # Each answer is the very array the model was given: an input passed through is not
    # copied again.
    for result, seen in zip(results, model.seen, strict=True):  # type: ignore[attr-defined]
        assert np.shares_memory(result["OUT"], seen)  # type: ignore[index]
