"""What a Python model imports from its own folders, side by side with tritonserver.

Two models ship files of the same names (a module, a module that imports another, a
package, a module in the model folder above the version folder, a file named like a
standard-library module). Each must see its own, the standard library must win over the
file, and a model reloaded after its files changed must see the new ones.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import tritonclient.http as httpclient

from tests.differential.conftest import probe_answer, start_triton
from tests.harness import run_server
from tests.models import write_python_probe

pytestmark = pytest.mark.triton

MODELS = ("py_files_a", "py_files_b")

_MODEL = """\
import json

import numpy as np
import triton_python_backend_utils as pb_utils

import colorsys
import common
import helper
import kit.part
from kit import PART

from . import other as relative


class TritonPythonModel:
    def execute(self, requests):
        import other as later  # imported at execution, not at load

        seen = {
            "helper": helper.NAME,
            "through_helper": helper.OTHER,
            "package": PART,
            "submodule": kit.part.PART,
            "model_folder": common.NAME,
            "later": later.NAME,
            "relative": relative.NAME,
            "colorsys_is_the_library": not hasattr(colorsys, "SHADOW"),
        }
        text = np.array([json.dumps(seen, sort_keys=True).encode()], dtype=object)
        return [pb_utils.InferenceResponse([pb_utils.Tensor("OUT", text)]) for _ in requests]
"""


def _write_model(repo: Path, name: str, tag: str) -> None:
    model = write_python_probe(repo, name, _MODEL)
    _write_files(model / "1", model, tag)


def _write_files(version: Path, model: Path, tag: str) -> None:
    (version / "helper.py").write_text(f"import other\nNAME = '{tag}'\nOTHER = other.NAME\n")
    (version / "other.py").write_text(f"NAME = '{tag}-other'\n")
    (version / "kit").mkdir(exist_ok=True)
    (version / "kit" / "__init__.py").write_text("from .part import PART\n")
    (version / "kit" / "part.py").write_text(f"PART = '{tag}-part'\n")
    (version / "colorsys.py").write_text("SHADOW = True\n")
    (model / "common.py").write_text(f"NAME = '{tag}-common'\n")


def _expected(tag: str) -> dict[str, Any]:
    return {
        "helper": tag,
        "through_helper": f"{tag}-other",
        "package": f"{tag}-part",
        "submodule": f"{tag}-part",
        "model_folder": f"{tag}-common",
        "later": f"{tag}-other",
        "relative": f"{tag}-other",
        "colorsys_is_the_library": True,
    }


@pytest.fixture()
def repos(tmp_path: Path) -> Iterator[dict[str, Path]]:
    # One repository per server: the reload test rewrites files under each.
    made = {}
    for side in ("ours", "triton"):
        repo = tmp_path / side
        for name, tag in zip(MODELS, ("a", "b"), strict=True):
            _write_model(repo, name, tag)
        made[side] = repo
    yield made


def test_each_model_imports_its_own_files(repos: dict[str, Path]) -> None:
    with (
        run_server(["--model-repository", str(repos["ours"])], services=("http",)) as ours,
        start_triton(repos["triton"]) as theirs,
    ):
        for name, tag in zip(MODELS, ("a", "b"), strict=True):
            mine, reference = probe_answer(ours.http_url, name), probe_answer(theirs.http_url, name)
            assert reference == _expected(tag)
            assert mine == reference


def test_reloaded_model_imports_its_changed_files(repos: dict[str, Path]) -> None:
    explicit = ["--model-control-mode=explicit", "--load-model=py_files_a"]
    with (
        run_server(
            ["--model-repository", str(repos["ours"]), *explicit], services=("http",)
        ) as ours,
        start_triton(repos["triton"], explicit) as theirs,
    ):
        for side, server in (("ours", ours), ("triton", theirs)):
            assert probe_answer(server.http_url, "py_files_a") == _expected("a")
            model = repos[side] / "py_files_a"
            _write_files(model / "1", model, "a2")
            with httpclient.InferenceServerClient(server.http_url) as client:
                client.load_model("py_files_a")
            assert probe_answer(server.http_url, "py_files_a") == _expected("a2"), side
