"""A Python model's code failing, side by side with tritonserver: raising or calling
``sys.exit()`` while it is imported, in ``initialize`` and in ``execute``. Each fails its
own model (or request) with Triton's words, and the server serves the other models. And a
model that leaves out an output the client asked for.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import tritonclient.http as httpclient
from tritonclient.utils import InferenceServerException

from tests.differential.conftest import (
    OurFactory,
    TritonFactory,
    assert_same_outcome,
    repository_index,
    serve_side_by_side,
)
from tests.models import write_python_probe

pytestmark = pytest.mark.triton

_CLASS = """
import sys

import triton_python_backend_utils as pb_utils


class TritonPythonModel:
    def initialize(self, args):
        INITIALIZE

    def execute(self, requests):
        EXECUTE
        return [
            pb_utils.InferenceResponse(
                [pb_utils.Tensor("OUT", pb_utils.get_input_tensor_by_name(r, "IN").as_numpy())]
            )
            for r in requests
        ]
"""

# model name -> (code at import, in initialize, in execute)
MODELS = {
    "py_fine": ("", "pass", "pass"),
    "py_raises_in_initialize": ("", "raise ValueError('no settings')", "pass"),
    "py_exits_in_initialize": ("", "sys.exit('no settings')", "pass"),
    "py_exits_at_import": ("import sys\nsys.exit('at import')\n", "pass", "pass"),
    "py_exits_in_execute": ("", "pass", "sys.exit(3)"),
    "py_omits_output": ("", "pass", "return [pb_utils.InferenceResponse([]) for r in requests]"),
}
LOAD_FAILURES = ("py_raises_in_initialize", "py_exits_in_initialize")


def _repo(base: Path) -> Path:
    repo = base / "repo"
    for name, (at_import, initialize, execute) in MODELS.items():
        source = at_import + _CLASS.replace("INITIALIZE", initialize).replace("EXECUTE", execute)
        write_python_probe(repo, name, source, output="INT32")
    return repo


def _infer(url: str, name: str, asked: bool = False) -> tuple[str, str]:
    with httpclient.InferenceServerClient(url) as client:
        tensor = httpclient.InferInput("IN", [1], "INT32")
        tensor.set_data_from_numpy(np.array([5], dtype=np.int32))
        outputs = [httpclient.InferRequestedOutput("OUT")] if asked else None
        try:
            result = client.infer(name, [tensor], outputs=outputs)
            out = result.as_numpy("OUT")
            return "ok", str(None if out is None else out.tolist())
        except InferenceServerException as exc:
            return str(exc.status()), exc.message()


def test_model_code_failures_match(
    tmp_path: Path, our_server: OurFactory, triton_server: TritonFactory
) -> None:
    ours_process, triton = serve_side_by_side(our_server, triton_server, _repo(tmp_path))
    ours, theirs = repository_index(ours_process.http_url), repository_index(triton.http_url)
    for name in LOAD_FAILURES:
        assert theirs[name]["state"] == "UNAVAILABLE"
        assert_same_outcome(name, ours[name], theirs[name])
    # Triton's reason goes on with importlib's frames, which differ: the same error and the
    # model's own frame.
    exited = "SystemExit: at import\n\nAt:\n  "
    assert theirs["py_exits_at_import"]["reason"].startswith("Internal: " + exited)
    assert ours["py_exits_at_import"]["state"] == "UNAVAILABLE"
    assert ours["py_exits_at_import"]["reason"].startswith(exited)
    assert "model.py(2): <module>\n" in ours["py_exits_at_import"]["reason"]
    for name in ("py_exits_in_execute", "py_fine", "py_exits_in_execute", "py_fine"):
        assert _infer(ours_process.http_url, name) == _infer(triton.http_url, name)
    assert _infer(ours_process.http_url, "py_fine") == ("ok", "[5]")
    for asked in (False, True):
        answer = _infer(ours_process.http_url, "py_omits_output", asked)
        assert answer == _infer(triton.http_url, "py_omits_output", asked) == ("ok", "None")
