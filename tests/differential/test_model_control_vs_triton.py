"""Explicit model control against NVIDIA's tritonserver: load, reload with a JSON config
override, uploaded files, unload, and the failures of each, answered alike."""

from __future__ import annotations

import base64
import json
import time
from pathlib import Path
from typing import Any

import pytest

from tests import models
from tests.differential.conftest import start_triton
from tests.differential.http_wire import ONE_GROUP, J, comparable, send, tensor
from tests.harness import run_server

pytestmark = pytest.mark.triton


def _override(backend: str, **extra: Any) -> str:
    config = {
        "backend": backend,
        "max_batch_size": 0,
        "input": [{"name": "INPUT0", "data_type": "TYPE_FP32", "dims": [-1]}],
        "output": [{"name": "OUTPUT0", "data_type": "TYPE_FP32", "dims": [-1]}],
        "instance_group": [{"count": 1, "kind": "KIND_CPU"}],
        **extra,
    }
    return json.dumps(config)


def _settled_index(url: str) -> Any:
    """The repository index once no model is LOADING or UNLOADING (Triton unloads in the
    background; the answer to the unload call comes first)."""
    deadline = time.monotonic() + 60
    while True:
        answer = send(url, "POST", "/v2/repository/index")
        rows = answer.document
        if not any(row.get("state") in ("LOADING", "UNLOADING") for row in rows):
            return rows
        assert time.monotonic() < deadline, rows
        time.sleep(0.05)  # polling the index, not waiting a fixed time


def test_explicit_model_control_matches(tmp_path: Path) -> None:
    theirs, ours = tmp_path / "triton", tmp_path / "ours"
    for repo, python in ((theirs, True), (ours, False)):
        identity = models.write_python_identity if python else models.write_onnx_identity
        add_sub = models.write_python_add_sub if python else models.write_onnx_add_sub
        add_sub(repo, "simple", "INT32", [16], 8, ONE_GROUP)
        identity(repo, "versions", "FP32", [-1], 0, ONE_GROUP, versions=(1, 2, 3))
        models.write_config(repo, "unparsable", 'name: "unparsable"\nno_such_field: 1\n')
        models.write_config(
            repo,
            "misnamed",
            models.identity_config("other", backend="python" if python else "onnxruntime"),
        )
        models.write_config(
            repo,
            "no_versions",
            models.identity_config("no_versions", backend="python" if python else "onnxruntime"),
        )
    flags = ["--model-control-mode=explicit", "--load-model=simple"]
    python_file = base64.b64encode(models.PYTHON_IDENTITY_SOURCE.encode()).decode()
    onnx_file = base64.b64encode(
        models.onnx_identity_model("FP32", [-1], batched=False).SerializeToString()
    ).decode()
    identity_request = J({"inputs": [tensor("INPUT0", "FP32", [3], [1, 2, 3])]})
    with (
        start_triton(theirs, flags) as triton,
        run_server(["--model-repository", str(ours), *flags], services=("http",)) as server,
    ):
        steps: list[tuple[str, str, str, Any]] = [
            ("index", "POST", "/v2/repository/index", None),
            ("ready", "GET", "/v2/health/ready", None),
            ("not-loaded-metadata", "GET", "/v2/models/versions", None),
            ("not-loaded-ready", "GET", "/v2/models/versions/ready", None),
            ("not-loaded-stats", "GET", "/v2/models/versions/stats", None),
            ("load", "POST", "/v2/repository/models/versions/load", None),
            ("metadata", "GET", "/v2/models/versions", None),
            (
                "override",
                "POST",
                "/v2/repository/models/versions/load",
                lambda b, f: J(
                    {"parameters": {"config": _override(b, version_policy={"all": {}})}}
                ),
            ),
            ("metadata-after-override", "GET", "/v2/models/versions", None),
            ("config-after-override", "GET", "/v2/models/versions/config", None),
            (
                "override-malformed",
                "POST",
                "/v2/repository/models/versions/load",
                J({"parameters": {"config": "{bad"}}),
            ),
            (
                "override-unknown-field",
                "POST",
                "/v2/repository/models/versions/load",
                J({"parameters": {"config": '{"no_such_field": 1}'}}),
            ),
            (
                "override-not-string",
                "POST",
                "/v2/repository/models/versions/load",
                J({"parameters": {"config": 5}}),
            ),
            (
                "parameters-not-object",
                "POST",
                "/v2/repository/models/versions/load",
                J({"parameters": 5}),
            ),
            ("load-malformed-body", "POST", "/v2/repository/models/versions/load", b"{bad"),
            # Every parameter of a load is read as a string, whatever its key.
            (
                "load-parameter-not-string",
                "POST",
                "/v2/repository/models/versions/load",
                J({"parameters": {"priority": 1}}),
            ),
            (
                "file-without-config",
                "POST",
                "/v2/repository/models/versions/load",
                lambda b, f: J({"parameters": {f"file:{f[0]}": f[1]}}),
            ),
            ("load-missing", "POST", "/v2/repository/models/missing/load", None),
            ("load-unparsable", "POST", "/v2/repository/models/unparsable/load", None),
            ("load-misnamed", "POST", "/v2/repository/models/misnamed/load", None),
            ("load-no-versions", "POST", "/v2/repository/models/no_versions/load", None),
            (
                "file-with-config",
                "POST",
                "/v2/repository/models/uploaded/load",
                lambda b, f: J({"parameters": {"config": _override(b), f"file:{f[0]}": f[1]}}),
            ),
            ("infer-uploaded", "POST", "/v2/models/uploaded/infer", identity_request),
            ("unload-missing", "POST", "/v2/repository/models/missing/unload", None),
            # An unload goes ahead whatever its body holds.
            ("unload-malformed-body", "POST", "/v2/repository/models/missing/unload", b"{bad"),
            (
                "unload",
                "POST",
                "/v2/repository/models/versions/unload",
                J({"parameters": {"unload_dependents": True}}),
            ),
            ("settled-index", "INDEX", "", None),
            ("unloaded-metadata", "GET", "/v2/models/versions", None),
            ("unloaded-ready", "GET", "/v2/models/versions/ready", None),
            ("ready-after-unload", "GET", "/v2/health/ready", None),
            ("reload", "POST", "/v2/repository/models/versions/load", None),
            ("infer-reloaded", "POST", "/v2/models/versions/infer", identity_request),
        ]
        for step, method, path, body in steps:
            answers = []
            for url, backend, model_file in (
                (triton.http_url, "python", ("1/model.py", python_file)),
                (server.http_url, "onnxruntime", ("1/model.onnx", onnx_file)),
            ):
                payload = body(backend, model_file) if callable(body) else body
                if method == "INDEX":
                    rows = [
                        r
                        for r in _settled_index(url)
                        if r["name"] not in ("unparsable", "misnamed", "no_versions")
                    ]
                    answers.append(rows)
                else:
                    answers.append(comparable(send(url, method, path, payload), path))
            assert answers[1] == answers[0], step
