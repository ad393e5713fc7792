"""The HTTP front end against NVIDIA's tritonserver: the same requests, the same answers.

Triton (2.51, Python backend only) serves ``model.py`` twins of the test models; this server
serves the ONNX versions with the same ``config.pbtxt`` bodies. Each case is sent raw to both,
and the status, the error message and the body must agree. Only what names the backend or the
version is left out of the comparison (``platform``, ``backend``, ``default_model_filename``,
server ``version``), plus durations and timestamps in statistics.

Cases Triton itself cannot survive (it aborts on a shape of 2**40 elements and on the
classification of a BYTES output) are in tests/integration/test_bad_input.py instead.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import tritonclient.http as httpclient

from tests import models
from tests.differential.conftest import TritonProcess, start_triton
from tests.differential.http_bad_cases import INVALID_CASES, ROUTE_CASES
from tests.differential.http_cases import VALID_CASES
from tests.differential.http_wire import ONE_GROUP, J, comparable, send, simple_inputs, tensor
from tests.harness import ServerProcess, run_server

pytestmark = pytest.mark.triton
INFER_CASES = VALID_CASES + INVALID_CASES


def build_repositories(root: Path) -> tuple[Path, Path]:
    """(python twins for Triton, ONNX models for us), the same configs apart from the backend."""
    theirs, ours = root / "triton", root / "ours"
    for repo, python in ((theirs, True), (ours, False)):
        identity = models.write_python_identity if python else models.write_onnx_identity
        add_sub = models.write_python_add_sub if python else models.write_onnx_add_sub
        add_sub(repo, "simple", "INT32", [16], 8, ONE_GROUP)
        for datatype in models.PYTHON_DATATYPES:
            identity(repo, f"id_{datatype.lower()}", datatype, [-1], 8, ONE_GROUP)
        identity(repo, "id_nobatch", "FP32", [2, -1], 0, ONE_GROUP)
        identity(repo, "id_2x", "FP32", [2, -1], 4, ONE_GROUP)
        identity(repo, "id_2var", "FP32", [-1, -1], 0, ONE_GROUP)
        identity(repo, "id_bytes1", "BYTES", [1], 8, ONE_GROUP)
        identity(repo, "stats_model", "FP32", [-1], 8, ONE_GROUP)
        identity(repo, "versions", "FP32", [-1], 0, ONE_GROUP, versions=(1, 2, 3))
        models.write_labels(repo, "id_fp32", [f"label{i}" for i in range(3)])
        config = repo / "id_fp32" / "config.pbtxt"
        text = config.read_text()
        config.write_text(
            text.replace('name: "OUTPUT0"', 'name: "OUTPUT0"\n    label_filename: "labels.txt"', 1)
        )
    return theirs, ours


@dataclass
class Pair:
    triton: TritonProcess
    ours: ServerProcess


@pytest.fixture(scope="module")
def servers(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Pair]:
    theirs, ours = build_repositories(tmp_path_factory.mktemp("repos"))
    with (
        start_triton(theirs) as triton,
        run_server(["--model-repository", str(ours)], services=("http",)) as server,
    ):
        yield Pair(triton, server)


@pytest.mark.parametrize(
    ("method", "path", "body"), [c[1:] for c in ROUTE_CASES], ids=[c[0] for c in ROUTE_CASES]
)
def test_routes_match(servers: Pair, method: str, path: str, body: bytes | None) -> None:
    theirs = send(servers.triton.http_url, method, path, body)
    ours = send(servers.ours.http_url, method, path, body)
    assert comparable(ours, path) == comparable(theirs, path)


@pytest.mark.parametrize(
    ("path", "body", "headers"), [c[1:] for c in INFER_CASES], ids=[c[0] for c in INFER_CASES]
)
def test_infer_matches(
    servers: Pair, path: str, body: bytes | None, headers: dict[str, str]
) -> None:
    theirs = send(servers.triton.http_url, "POST", path, body, headers)
    ours = send(servers.ours.http_url, "POST", path, body, headers)
    assert comparable(ours, path) == comparable(theirs, path)
    assert ("content-encoding" in ours.headers) == ("content-encoding" in theirs.headers)
    assert ours.headers.get("accept-encoding") == theirs.headers.get("accept-encoding")
    # Both keep serving after whatever this case was.
    check = J({"inputs": simple_inputs()})
    assert send(servers.ours.http_url, "POST", "/v2/models/simple/infer", check).status == 200


def _stats(url: str) -> dict[str, Any]:
    answer = send(url, "GET", "/v2/models/stats_model/stats")
    assert answer.status == 200, answer.body
    (entry,) = answer.document["model_stats"]
    entry["last_inference"] = int(entry["last_inference"] > 0)
    for group in (entry["inference_stats"], *entry["batch_stats"]):
        for value in group.values():
            if isinstance(value, dict):
                value["ns"] = int(value["ns"] > 0)
    return entry


def test_statistics_match(servers: Pair) -> None:
    before = (_stats(servers.ours.http_url), _stats(servers.triton.http_url))
    assert before[0] == before[1]
    for url in (servers.ours.http_url, servers.triton.http_url):
        client = httpclient.InferenceServerClient(url)
        try:
            for rows in (1, 3, 2):
                data = np.arange(rows * 4, dtype=np.float32).reshape(rows, 4)
                item = httpclient.InferInput("INPUT0", [rows, 4], "FP32")
                item.set_data_from_numpy(data)
                client.infer("stats_model", [item])
            for body in (
                J({"inputs": [tensor("INPUT0", "FP32", [1, 2], [1])]}),
                J({"inputs": [tensor("INPUT0", "INT32", [1, 1], [1])]}),
            ):
                send(url, "POST", "/v2/models/stats_model/infer", body)
        finally:
            client.close()
    assert _stats(servers.ours.http_url) == _stats(servers.triton.http_url)
    all_ours = send(servers.ours.http_url, "GET", "/v2/models/stats").document
    all_theirs = send(servers.triton.http_url, "GET", "/v2/models/stats").document
    assert [(m["name"], m["version"]) for m in all_ours["model_stats"]] == [
        (m["name"], m["version"]) for m in all_theirs["model_stats"]
    ]
    assert [sorted(m) for m in all_ours["model_stats"]] == [
        sorted(m) for m in all_theirs["model_stats"]
    ]


@pytest.mark.parametrize("datatype", [d for d in models.PYTHON_DATATYPES])
def test_tritonclient_round_trip_matches(servers: Pair, datatype: str) -> None:
    """tritonclient's default path (binary in, binary out) on every datatype both can carry."""
    data = models.sample_array(datatype, (3, 5), np.random.default_rng(7))
    results = []
    for url in (servers.ours.http_url, servers.triton.http_url):
        client = httpclient.InferenceServerClient(url)
        try:
            item = httpclient.InferInput("INPUT0", list(data.shape), datatype)
            item.set_data_from_numpy(data)
            result = client.infer(f"id_{datatype.lower()}", [item], request_id="rt")
            results.append((result.get_response(), result.as_numpy("OUTPUT0")))
        finally:
            client.close()
    (ours, ours_array), (theirs, theirs_array) = results
    assert ours == theirs
    np.testing.assert_array_equal(ours_array, data)
    np.testing.assert_array_equal(ours_array, theirs_array)


# --- explicit model control ---------------------------------------------------------------
