"""The ``triton_python_backend_utils`` API a model sees, against tritonserver: every name its
module and classes give a model is here too (side by side), and the model loading API
(``load_model``, ``unload_model``, ``is_model_ready``, ``get_model_dir``) answers as
tritonserver 2.51 answered, with explicit model control and without.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.differential.conftest import probe_answer, start_triton
from tests.harness import run_server
from tests.models import write_python_probe

pytestmark = pytest.mark.triton

_NAMES = """
import json

import numpy as np
import triton_python_backend_utils as pb_utils

CLASSES = ("Tensor", "InferenceRequest", "InferenceResponse", "TritonError", "Logger",
           "MetricFamily", "Metric", "PreferredMemory", "TritonModelException", "ModelConfig")


def names(value):
    return sorted(n for n in dir(value) if not n.startswith("__"))


class TritonPythonModel:
    def execute(self, requests):
        seen = {"module": names(pb_utils), "request": names(requests[0])}
        for cls in CLASSES:
            if hasattr(pb_utils, cls):
                seen[cls] = names(getattr(pb_utils, cls))
        text = np.array([json.dumps(seen).encode()], dtype=object)
        return [pb_utils.InferenceResponse([pb_utils.Tensor("OUT", text)]) for _ in requests]
"""

_CONTROL = """
import json

import numpy as np
import triton_python_backend_utils as pb_utils

OVERRIDE = json.dumps({
    "backend": "python",
    "max_batch_size": 0,
    "input": [{"name": "IN", "data_type": "TYPE_INT32", "dims": [1]}],
    "output": [{"name": "OUT", "data_type": "TYPE_STRING", "dims": [1]}],
})


def attempt(steps, label, call):
    try:
        steps.append([label, "ok", repr(call())])
    except pb_utils.TritonModelException as exc:
        steps.append([label, "TritonModelException", str(exc)])


class TritonPythonModel:
    def execute(self, requests):
        steps = []
        here = pb_utils.get_model_dir()
        steps.append(["model_dir", here.endswith("py_control/1")])
        attempt(steps, "ready", lambda: pb_utils.is_model_ready("py_other"))
        attempt(steps, "unload", lambda: pb_utils.unload_model("py_other"))
        attempt(steps, "ready after unload", lambda: pb_utils.is_model_ready("py_other"))
        attempt(steps, "load", lambda: pb_utils.load_model("py_other"))
        attempt(steps, "ready after load", lambda: pb_utils.is_model_ready("py_other", "1"))
        attempt(steps, "load missing", lambda: pb_utils.load_model("no_such_model"))
        attempt(steps, "ready missing", lambda: pb_utils.is_model_ready("no_such_model"))
        attempt(steps, "load with config", lambda: pb_utils.load_model("py_other", OVERRIDE))
        text = np.array([json.dumps(steps).encode()], dtype=object)
        return [pb_utils.InferenceResponse([pb_utils.Tensor("OUT", text)]) for _ in requests]
"""

_OTHER = """
import numpy as np
import triton_python_backend_utils as pb_utils


class TritonPythonModel:
    def execute(self, requests):
        text = np.array([b'"other"'], dtype=object)  # JSON, as the other models answer
        return [pb_utils.InferenceResponse([pb_utils.Tensor("OUT", text)]) for _ in requests]
"""


def _repo(base: Path) -> Path:
    for name, source in (("py_names", _NAMES), ("py_control", _CONTROL), ("py_other", _OTHER)):
        write_python_probe(base, name, source)
    return base


def test_every_name_a_model_uses_is_here(tmp_path: Path) -> None:
    repo = _repo(tmp_path)
    with (
        run_server(["--model-repository", str(repo)], services=("http",)) as ours,
        start_triton(repo) as theirs,
    ):
        mine, reference = (
            probe_answer(ours.http_url, "py_names"),
            probe_answer(theirs.http_url, "py_names"),
        )
    missing = {
        scope: sorted(set(names) - set(mine.get(scope, [])))
        for scope, names in reference.items()
        if set(names) - set(mine.get(scope, []))
    }
    assert missing == {}


def _refused(verb: str) -> str:
    return (
        f"Failed to {verb} model: Failed to process the request for model 'py_control_0', "
        "message: explicit model load / unload is not allowed if polling is enabled"
    )


# What tritonserver 2.51 answered to the calls of ``py_control``. These are not asked of it
# side by side: with these calls it aborts now and then (a boost::interprocess lock
# exception in its Python backend) or hangs, which would make the test fail for it.
ANSWERS = {
    False: [
        ["model_dir", True],
        ["ready", "ok", "True"],
        ["unload", "TritonModelException", _refused("unload")],
        ["ready after unload", "ok", "True"],
        ["load", "TritonModelException", _refused("load")],
        ["ready after load", "ok", "True"],
        ["load missing", "TritonModelException", _refused("load")],
        ["ready missing", "ok", "False"],
        ["load with config", "TritonModelException", _refused("load")],
    ],
    True: [
        ["model_dir", True],
        ["ready", "ok", "True"],
        ["unload", "ok", "None"],
        ["ready after unload", "ok", "False"],
        ["load", "ok", "None"],
        ["ready after load", "ok", "True"],
        [
            "load missing",
            "TritonModelException",
            "Failed to load model: Failed to process the request for model 'py_control_0', "
            "message: failed to load 'no_such_model', failed to poll from model repository",
        ],
        ["ready missing", "ok", "False"],
        ["load with config", "ok", "None"],
    ],
}


@pytest.mark.parametrize("explicit", [False, True])
def test_the_model_loading_api_answers_as_triton(tmp_path: Path, explicit: bool) -> None:
    repo = _repo(tmp_path)
    mode = ["--model-control-mode=explicit", "--load-model=*"] if explicit else []
    with run_server(["--model-repository", str(repo), *mode], services=("http",)) as ours:
        assert probe_answer(ours.http_url, "py_control") == ANSWERS[explicit]
        # The model it unloaded and loaded again serves.
        assert probe_answer(ours.http_url, "py_other") == "other"
