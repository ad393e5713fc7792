"""Triton-style Python-backend test models (see README.md) and a helper that lays them out."""

from __future__ import annotations

import shutil
from collections.abc import Iterable
from pathlib import Path

from tests.models import copy_bundled_model, write_onnx_add_sub

HERE = Path(__file__).resolve().parent
ALL = tuple(sorted(p.name for p in HERE.iterdir() if (p / "1" / "model.py").is_file()))
# The ONNX model that the BLS models call.
BLS_TARGET = "onnx_add_sub"


def build_repository(
    repo: Path, names: Iterable[str] = ALL, *, bls_target: bool = True, bundled: bool = True
) -> Path:
    """Copy the named test models into ``repo``, with the ONNX model the BLS models call and
    the bundled ``add_sub_python``."""
    repo.mkdir(parents=True, exist_ok=True)
    for name in names:
        shutil.copytree(HERE / name, repo / name, ignore=shutil.ignore_patterns("__pycache__"))
    if bls_target:
        write_onnx_add_sub(repo, BLS_TARGET, "INT32", (16,), max_batch_size=8)
    if bundled:
        copy_bundled_model(repo, "add_sub_python")
    return repo
