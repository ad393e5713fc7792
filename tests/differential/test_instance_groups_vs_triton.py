"""Instance groups against tritonserver (which sees no GPU here): the instance names and kinds
a Python model's ``initialize`` receives, for groups without a name, with a name, counts of one
and more, and no ``instance_group`` at all; and which groups load, with the reasons of those
that do not."""

from __future__ import annotations

import json
import shutil
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pytest
import tritonclient.http as httpclient

from tests.differential.conftest import (
    OurFactory,
    TritonFactory,
    assert_same_outcome,
    repository_index,
    serve_side_by_side,
)
from tests.python_models import HERE

pytestmark = pytest.mark.triton

GROUPS = {
    "no_group": "",
    "one": "instance_group [ { count: 1 kind: KIND_CPU } ]",
    "two": "instance_group [ { count: 2 kind: KIND_CPU } ]",
    "named": (
        'instance_group [ { name: "grp" count: 2 kind: KIND_CPU }, { count: 1 kind: KIND_CPU } ]'
    ),
}


# Groups tritonserver refuses, or repairs, on a machine without a GPU.
CHECKED = {
    "cpu_gpus": "instance_group [ { kind: KIND_CPU gpus: [ 0 ] } ]",
    "auto_gpus": "instance_group [ { kind: KIND_AUTO gpus: [ 0 ] } ]",
    "model_gpus": "instance_group [ { kind: KIND_MODEL gpus: [ 0 ] } ]",
    "gpu_none": "instance_group [ { kind: KIND_GPU } ]",
    "gpu_negative": "instance_group [ { kind: KIND_GPU gpus: [ -1 ] } ]",
    "count_zero": "instance_group [ { kind: KIND_CPU count: 0 } ]",
    "count_negative": "instance_group [ { kind: KIND_CPU count: -2 } ]",
}


def _repo(base: Path, groups_by_model: dict[str, str] = GROUPS) -> Path:
    repo = base / "repo"
    source = HERE / "py_strings"
    for name, groups in groups_by_model.items():
        (repo / name / "1").mkdir(parents=True)
        shutil.copy(source / "1" / "model.py", repo / name / "1" / "model.py")
        config = (source / "config.pbtxt").read_text().replace('"py_strings"', f'"{name}"')
        (repo / name / "config.pbtxt").write_text(config + "\n" + groups + "\n")
    return repo


def _instances(url: str, model: str, expected: int) -> set[tuple[str, str, str]]:
    """(name, kind, device id) of the instances that answered, with enough concurrent
    requests that every instance takes some."""

    def one(_: int) -> tuple[str, str, str]:
        with httpclient.InferenceServerClient(url) as client:
            text = httpclient.InferInput("TEXT", [1], "BYTES")
            text.set_data_from_numpy(np.array([b"x"], dtype=object))
            info = json.loads(client.infer(model, [text]).as_numpy("INFO")[0])
        args = info["args"]
        return (
            args["model_instance_name"],
            args["model_instance_kind"],
            args["model_instance_device_id"],
        )

    seen: set[tuple[str, str, str]] = set()
    with ThreadPoolExecutor(8) as pool:
        for _ in range(20):
            seen.update(pool.map(one, range(16)))
            if len(seen) >= expected:
                break
    return seen


def test_instance_names_match(
    tmp_path: Path, our_server: OurFactory, triton_server: TritonFactory
) -> None:
    repo = _repo(tmp_path)
    ours, theirs = our_server(repo), triton_server(repo)
    for model, count in (("no_group", 1), ("one", 1), ("two", 2), ("named", 3)):
        reference = _instances(theirs.http_url, model, count)
        assert len(reference) == count, reference
        assert _instances(ours.http_url, model, count) == reference, model


def test_instance_group_checks_match(
    tmp_path: Path, our_server: OurFactory, triton_server: TritonFactory
) -> None:
    ours, triton = serve_side_by_side(our_server, triton_server, _repo(tmp_path, CHECKED))
    ours_index = repository_index(ours.http_url)
    theirs_index = repository_index(triton.http_url)
    assert set(ours_index) == set(theirs_index) == set(CHECKED)
    for name in CHECKED:
        assert_same_outcome(name, ours_index[name], theirs_index[name])
    assert {n for n, row in theirs_index.items() if row["state"] == "READY"} == {
        "count_zero",
        "count_negative",
    }
