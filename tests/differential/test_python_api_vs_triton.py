"""The ``triton_python_backend_utils`` API a model sees, side by side with tritonserver: every
name its module and classes give a model is here too, and the model loading API
(``load_model``, ``unload_model``, ``is_model_ready``, ``get_model_dir``) answers alike, with
explicit model control and without.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import tritonclient.http as httpclient

from tests.differential.conftest import start_triton
from tests.harness import run_server
from tests.models import model_config, write_python_model

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
        text = np.array([b"other"], dtype=object)
        return [pb_utils.InferenceResponse([pb_utils.Tensor("OUT", text)]) for _ in requests]
"""


def _repo(base: Path) -> Path:
    for name, source in (("py_names", _NAMES), ("py_control", _CONTROL), ("py_other", _OTHER)):
        config = model_config(
            name,
            backend="python",
            max_batch_size=0,
            inputs=[("IN", "INT32", [1])],
            outputs=[("OUT", "BYTES", [1])],
        )
        write_python_model(base, name, source, config)
    return base


def _answer(url: str, model: str) -> Any:
    with httpclient.InferenceServerClient(url) as client:
        tensor = httpclient.InferInput("IN", [1], "INT32")
        tensor.set_data_from_numpy(np.array([1], dtype=np.int32))
        return json.loads(client.infer(model, [tensor]).as_numpy("OUT")[0])


def test_every_name_a_model_uses_is_here(tmp_path: Path) -> None:
    repo = _repo(tmp_path)
    with (
        run_server(["--model-repository", str(repo)], services=("http",)) as ours,
        start_triton(repo) as theirs,
    ):
        mine, reference = _answer(ours.http_url, "py_names"), _answer(theirs.http_url, "py_names")
    missing = {
        scope: sorted(set(names) - set(mine.get(scope, [])))
        for scope, names in reference.items()
        if set(names) - set(mine.get(scope, []))
    }
    assert missing == {}


@pytest.mark.parametrize("explicit", [False, True])
def test_the_model_loading_api_answers_alike(tmp_path: Path, explicit: bool) -> None:
    repo = _repo(tmp_path)
    mode = ["--model-control-mode=explicit", "--load-model=*"] if explicit else []
    with run_server(["--model-repository", str(repo), *mode], services=("http",)) as ours:
        mine = _answer(ours.http_url, "py_control")
    with start_triton(repo, mode) as theirs:
        reference = _answer(theirs.http_url, "py_control")
    assert reference[0] == ["model_dir", True]
    assert mine == reference
