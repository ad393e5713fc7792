"""Golden files for the config pipeline (parse -> backend fields -> auto-complete ->
normalize -> validate).

Each folder under tests/golden/configs/ is one model directory: a ``config.pbtxt`` (or none),
and optionally ``model.json`` describing an ONNX model to build into ``1/model.onnx`` with
tests.models. It holds either ``expected.json``, the normalized config exactly as
``GET /v2/models/<m>/config`` serves it, or ``expected_error.txt``, the exact error message
(``<MODEL_DIR>`` stands for the model directory). ``GOLDEN_UPDATE=1`` rewrites the expected
files from the current output; review the diff before committing it.
"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path
from typing import Any

import pytest

from server.backends.registry import get_backend
from server.errors import ServerError
from server.repository import config as cfg
from tests import models

GOLDEN = Path(__file__).resolve().parents[1] / "golden" / "configs"
CASES = sorted(p.name for p in GOLDEN.iterdir() if p.is_dir())
UPDATE = os.environ.get("GOLDEN_UPDATE") == "1"


def _build_model(spec: dict[str, Any], version_dir: Path) -> None:
    batched = bool(spec.get("batched", True))
    if spec["builder"] == "identity":
        model = models.onnx_identity_model(spec["datatype"], spec["dims"], batched=batched)
    else:
        model = models.onnx_add_sub_model(spec["datatype"], spec["dims"], batched=batched)
    version_dir.mkdir(parents=True)
    (version_dir / "model.onnx").write_bytes(model.SerializeToString())


def _autocomplete(config: Any, directory: Path) -> None:
    if config.backend:
        versions = cfg.version_dirs(directory)
        get_backend(config.backend).autocomplete(
            config, directory, versions[max(versions)] if versions else None
        )


def run_pipeline(source: Path, work: Path) -> tuple[str, str]:
    """('expected.json', text) on success, ('expected_error.txt', message) on failure."""
    model_dir = work / source.name
    shutil.copytree(source, model_dir, ignore=shutil.ignore_patterns("expected*", "model.json"))
    spec_file = source / "model.json"
    if spec_file.exists():
        _build_model(json.loads(spec_file.read_text()), model_dir / "1")
    try:
        config = cfg.load_model_config(
            model_dir, source.name, autocomplete=_autocomplete, gpu_count=0
        )
    except ServerError as exc:
        return "expected_error.txt", exc.message.replace(str(model_dir), "<MODEL_DIR>") + "\n"
    return "expected.json", json.dumps(
        cfg.config_to_json_dict(config), indent=2, sort_keys=True
    ) + "\n"


@pytest.mark.parametrize("case", CASES)
def test_config_pipeline_matches_golden_file(case: str, tmp_path: Path) -> None:
    source = GOLDEN / case
    kind, produced = run_pipeline(source, tmp_path)
    if UPDATE:
        for stale in source.glob("expected*"):
            stale.unlink()
        (source / kind).write_text(produced)
    expected = sorted(p.name for p in source.glob("expected*"))
    assert expected == [kind], f"{case}: produced {kind}, the folder holds {expected}"
    assert produced == (source / kind).read_text()


def test_every_case_kind_is_covered() -> None:
    kinds = {next(iter((GOLDEN / c).glob("expected*"))).name for c in CASES}
    assert kinds == {"expected.json", "expected_error.txt"}
