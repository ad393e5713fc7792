"""How many intra-op threads an ONNX Runtime session gets (``server.backends.onnxruntime``):
the model's ``intra_op_thread_count`` when it sets one, otherwise the CPUs this process may
use when its CPU set or quota limits it, or else the machine's physical cores, always given
explicitly so that ONNX Runtime pins no thread."""

from __future__ import annotations

import os
import subprocess
import sys

import psutil
import pytest
from google.protobuf import text_format
from joblib import cpu_count

from server.backends import cpus
from server.backends import onnxruntime as ort_backend
from server.errors import ServerError
from server.protocol.generated import model_config_pb2


def options(parameters: dict[str, str]) -> object:
    config = model_config_pb2.ModelConfig(name="m")
    for key, value in parameters.items():
        config.parameters[key].string_value = value
    return ort_backend._session_options(config)


@pytest.fixture(autouse=True)
def _no_ort_variable(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("ORT_INTRA_OP_NUM_THREADS", raising=False)


def test_without_a_setting_the_count_is_what_this_process_may_use() -> None:
    count = options({}).intra_op_num_threads  # type: ignore[attr-defined]
    assert count == cpus.default_intra_op_threads()
    if cpu_count() < (os.cpu_count() or 1):  # limited by a CPU set or a quota
        assert count == cpus.limited_cpus() == cpu_count()
    else:  # the whole machine: its physical cores, as ONNX Runtime counts by default
        assert cpus.limited_cpus() is None
        assert count == psutil.cpu_count(logical=False)
    assert 1 <= count <= len(os.sched_getaffinity(0))


def test_the_models_own_setting_wins_and_zero_asks_for_onnxruntimes_default() -> None:
    assert options({"intra_op_thread_count": "3"}).intra_op_num_threads == 3  # type: ignore[attr-defined]
    assert options({"intra_op_thread_count": "0"}).intra_op_num_threads == 0  # type: ignore[attr-defined]
    assert options({"inter_op_thread_count": "2"}).inter_op_num_threads == 2  # type: ignore[attr-defined]


def test_onnxruntimes_own_variable_is_left_in_force(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("ORT_INTRA_OP_NUM_THREADS", "5")
    assert options({}).intra_op_num_threads == 0  # type: ignore[attr-defined]


def test_a_count_that_is_not_an_integer_is_refused() -> None:
    with pytest.raises(ServerError, match="parameter 'intra_op_thread_count' of model 'm'"):
        options({"intra_op_thread_count": "many"})


def _count_in_a_child(env: dict[str, str], one_cpu: bool) -> str:
    cpu = min(os.sched_getaffinity(0))
    code = "from server.backends.onnxruntime import default_intra_op_threads as d; print(d())"
    return subprocess.run(
        [sys.executable, "-c", code],
        preexec_fn=(lambda: os.sched_setaffinity(0, {cpu})) if one_cpu else None,
        env={**os.environ, **env},
        capture_output=True,
        text=True,
        check=True,
        cwd=os.path.dirname(os.path.dirname(os.path.dirname(__file__))),
    ).stdout.strip()


@pytest.mark.skipif(not hasattr(os, "sched_setaffinity"), reason="Linux only")
def test_a_process_limited_to_one_cpu_gets_one_thread() -> None:
    assert _count_in_a_child({}, one_cpu=True) == "1"


@pytest.mark.skipif(len(os.sched_getaffinity(0)) < 2, reason="needs two CPUs to limit")
def test_a_limit_below_the_cpu_set_counts_as_a_quota_does() -> None:
    # joblib's own variable caps its count as a cgroup's CPU quota does.
    assert _count_in_a_child({"LOKY_MAX_CPU_COUNT": "1"}, one_cpu=False) == "1"


def test_the_parsed_parameters_of_a_config_file_reach_the_session() -> None:
    config = text_format.Parse(
        'name: "m" parameters { key: "intra_op_thread_count" value { string_value: "1" } }',
        model_config_pb2.ModelConfig(),
    )
    assert ort_backend._session_options(config).intra_op_num_threads == 1
