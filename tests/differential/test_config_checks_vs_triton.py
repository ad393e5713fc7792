"""Configuration checks against tritonserver: a repository of Python models whose configs
break one rule each (or sit at an edge Triton accepts, such as a version directory "0"), served by both servers with
--exit-on-error=false. Where tritonserver reports a state, the states must match and its
reason must end with ours (it puts its status code's name first). Where it fails the model
before giving it a state (a config it cannot take, or no version to load), it logs why; ours
must be UNAVAILABLE with that message as the reason."""

from __future__ import annotations

import re
import shutil
from pathlib import Path

import pytest

from tests.differential.conftest import (
    OurFactory,
    TritonFactory,
    assert_same_outcome,
    repository_index,
    serve_side_by_side,
)
from tests.python_models import HERE

pytestmark = pytest.mark.triton

INPUT = 'input [ { name: "TEXT", data_type: TYPE_STRING, dims: [ -1 ] } ]'
OUTPUTS = """output [
  { name: "UPPER", data_type: TYPE_STRING, dims: [ -1 ] },
  { name: "LENGTHS", data_type: TYPE_INT32, dims: [ -1 ] },
  { name: "INFO", data_type: TYPE_STRING, dims: [ 1 ] }
]"""
IO = INPUT + "\n" + OUTPUTS


def _input(fields: str) -> str:
    return f'input [ {{ name: "TEXT", data_type: TYPE_STRING, {fields} }} ]\n' + OUTPUTS


CASES = {
    "negative_batch": "max_batch_size: -1\n" + IO,
    "zero_dim": "max_batch_size: 0\n" + _input("dims: [ 0 ]"),
    "minus_two_dim": "max_batch_size: 0\n" + _input("dims: [ -2 ]"),
    "batched_no_dims": "max_batch_size: 4\n" + _input("dims: [ ]"),
    "reshape_size": "max_batch_size: 0\n" + _input("dims: [ 4 ] reshape: { shape: [ 3 ] }"),
    "reshape_ok": "max_batch_size: 0\n" + _input("dims: [ 2, 2 ] reshape: { shape: [ 4 ] }"),
    "duplicate_input": "max_batch_size: 0\n" + INPUT + "\n" + IO,
    "unnamed_input": "max_batch_size: 0\ninput [ { data_type: TYPE_STRING, dims: [ -1 ] } ]\n"
    + OUTPUTS,
    "untyped_input": 'max_batch_size: 0\ninput [ { name: "TEXT", dims: [ -1 ] } ]\n' + OUTPUTS,
    "output_no_dims": "max_batch_size: 0\n" + IO.replace("dims: [ 1 ] }", "}"),
    "preferred_above_max": "max_batch_size: 4\n"
    + IO
    + "\ndynamic_batching { preferred_batch_size: [ 8 ] }",
    "preferred_zero": "max_batch_size: 4\n"
    + IO
    + "\ndynamic_batching { preferred_batch_size: [ 0 ] }",
    "default_priority_out_of_range": "max_batch_size: 4\n"
    + IO
    + "\ndynamic_batching { priority_levels: 2 default_priority_level: 3 }",
    "preserve_ordering_levels": "max_batch_size: 4\n"
    + IO
    + "\ndynamic_batching { priority_levels: 2 default_priority_level: 1 preserve_ordering: true }",
    "queue_policy_level": "max_batch_size: 4\n"
    + IO
    + "\ndynamic_batching { priority_levels: 2 default_priority_level: 1 "
    "priority_queue_policy { key: 3 value: { max_queue_size: 1 } } }",
    "missing_version": "max_batch_size: 0\n"
    + IO
    + "\nversion_policy: { specific: { versions: [ 5 ] } }",
    "latest_zero": "max_batch_size: 0\n" + IO + "\nversion_policy: { latest: { num_versions: 0 } }",
    "missing_labels": "max_batch_size: 0\n"
    + IO.replace("dims: [ 1 ] }", 'dims: [ 1 ] label_filename: "absent.txt" }'),
    "ensemble_scheduling": "max_batch_size: 0\n"
    + IO
    + '\nensemble_scheduling { step [ { model_name: "x" model_version: -1 } ] }',
    "batch_input_source": "max_batch_size: 4\n"
    + IO
    + '\nbatch_input [ { kind: BATCH_ELEMENT_COUNT target_name: "N" data_type: TYPE_FP32 '
    'source_input: "NOPE" } ]',
    "name_mismatch": "NAME other_name\nmax_batch_size: 0\n" + IO,
    "nhwc_two_dims": "max_batch_size: 0\n" + _input("dims: [ 2, 2 ] format: FORMAT_NHWC"),
    "shape_tensor": "max_batch_size: 0\n" + _input("dims: [ -1 ] is_shape_tensor: true"),
    "profile": "max_batch_size: 0\n"
    + IO
    + '\ninstance_group [ { kind: KIND_CPU profile: [ "0" ] } ]',
    "batch_input_two_sources": "max_batch_size: 4\n"
    + IO
    + '\nbatch_input [ { kind: BATCH_ELEMENT_COUNT target_name: "N" data_type: TYPE_INT32 '
    'source_input: [ "TEXT", "TEXT" ] } ]',
    "batch_input_fp64": "max_batch_size: 4\n"
    + IO
    + '\nbatch_input [ { kind: BATCH_ELEMENT_COUNT target_name: "N" data_type: TYPE_FP64 '
    'source_input: "TEXT" } ]',
    "batch_output_target": "max_batch_size: 4\n"
    + IO
    + '\nbatch_output [ { target_name: [ "NOPE" ] kind: BATCH_SCATTER_WITH_INPUT_SHAPE '
    'source_input: [ "TEXT" ] } ]',
    "preferred_without_batching": "max_batch_size: 0\n"
    + IO
    + "\ndynamic_batching { preferred_batch_size: [ 2 ] }",
    "preserve_ordering_delay": "max_batch_size: 4\n"
    + IO
    + "\ndynamic_batching { preserve_ordering: true default_queue_policy { "
    "timeout_action: DELAY default_timeout_microseconds: 100 } }",
    "version_zero": "VERSION 0\nmax_batch_size: 0\n" + IO,
}


def _repo(base: Path) -> Path:
    repo = base / "repo"
    for name, body in CASES.items():
        config_name, version = name, "1"
        if body.startswith("NAME "):
            first, body = body.split("\n", 1)
            config_name = first.split()[1]
        if body.startswith("VERSION "):
            first, body = body.split("\n", 1)
            version = first.split()[1]
        (repo / name / version).mkdir(parents=True)
        shutil.copy(HERE / "py_strings" / "1" / "model.py", repo / name / version / "model.py")
        header = f'name: "{config_name}"\nbackend: "python"\n'
        (repo / name / "config.pbtxt").write_text(header + body + "\n")
    return repo


def test_config_checks_match(
    tmp_path: Path, our_server: OurFactory, triton_server: TritonFactory
) -> None:
    ours_process, triton = serve_side_by_side(our_server, triton_server, _repo(tmp_path))
    ours = repository_index(ours_process.http_url)
    theirs = repository_index(triton.http_url)
    log = triton.log()
    for name in CASES:
        mine = ours[name]
        reference = theirs.get(name, {})
        if "state" in reference:
            assert_same_outcome(name, mine, reference)
            continue
        logged = re.search(
            rf"(?:Poll failed for model directory|failed to load model) '{name}': (.*?)\"?$",
            log,
            re.MULTILINE,
        )
        assert logged is not None, (name, reference)
        assert mine["state"] == "UNAVAILABLE", (name, mine)
        assert mine["reason"] == logged.group(1), (name, mine, logged.group(1))
    # The edges tritonserver accepts.
    assert {n for n, row in theirs.items() if row.get("state") == "READY"} == {
        "reshape_ok",
        "duplicate_input",
        "version_zero",
    }
