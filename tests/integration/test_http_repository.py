"""Model control over HTTP: explicit load/unload (with a JSON config override and uploaded
files), start-up with a broken model under --exit-on-error and --strict-readiness, and poll
mode following the files on disk."""

from __future__ import annotations

import base64
import http.client
import json
import os
import shutil
import subprocess
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
import tritonclient.http as httpclient
from tritonclient.utils import InferenceServerException

from tests import models
from tests.harness import run_server, server_command

BROKEN_ONNX = b"this is not an onnx file"


def identity_infer(
    client: httpclient.InferenceServerClient, model: str, values: list[float]
) -> np.ndarray:
    data = np.array([values], dtype=np.float32)
    tensor = httpclient.InferInput("INPUT0", list(data.shape), "FP32")
    tensor.set_data_from_numpy(data)
    return client.infer(model, [tensor]).as_numpy("OUTPUT0")


def test_explicit_load_unload_override_and_files(tmp_path: Path) -> None:
    models.write_onnx_identity(tmp_path, "ident", "FP32", [-1], 8, versions=(1, 2))
    models.write_onnx_add_sub(tmp_path, "simple")
    args = [
        "--model-repository",
        str(tmp_path),
        "--model-control-mode=explicit",
        "--load-model=simple",
    ]
    with run_server(args, services=("http",)) as server:
        client = httpclient.InferenceServerClient(server.http_url)
        try:
            assert {"name": "ident"} in client.get_model_repository_index()
            assert not client.is_model_ready("ident")
            client.load_model("ident")
            assert client.get_model_metadata("ident")["versions"] == ["2"]
            np.testing.assert_array_equal(identity_infer(client, "ident", [1, 2]), [[1, 2]])

            # A JSON override replaces config.pbtxt for this load: all versions, no batching.
            override = {
                "backend": "onnxruntime",
                "max_batch_size": 0,
                "version_policy": {"all": {}},
                "input": [{"name": "INPUT0", "data_type": "TYPE_FP32", "dims": [1, -1]}],
                "output": [{"name": "OUTPUT0", "data_type": "TYPE_FP32", "dims": [1, -1]}],
            }
            client.load_model("ident", config=json.dumps(override))
            assert client.get_model_metadata("ident")["versions"] == ["1", "2"]
            assert client.get_model_config("ident")["max_batch_size"] == 0

            # Uploaded files need a config; the model need not exist in the repository.
            onnx = models.onnx_identity_model("FP32", [-1], batched=False).SerializeToString()
            override["input"][0]["dims"] = override["output"][0]["dims"] = [-1]
            override["version_policy"] = {"latest": {"num_versions": 1}}
            with pytest.raises(
                InferenceServerException, match="failed to poll from model repository"
            ):
                client.load_model("uploaded", files={"file:1/model.onnx": onnx})
            client.load_model(
                "uploaded", config=json.dumps(override), files={"file:1/model.onnx": onnx}
            )
            data = np.array([3, 4], dtype=np.float32)
            tensor = httpclient.InferInput("INPUT0", [2], "FP32")
            tensor.set_data_from_numpy(data)
            np.testing.assert_array_equal(
                client.infer("uploaded", [tensor]).as_numpy("OUTPUT0"), data
            )

            with pytest.raises(
                InferenceServerException, match="failed to poll from model repository"
            ):
                client.load_model("ident", config="{not json")
            assert client.is_model_ready("ident"), (
                "a rejected override leaves the loaded model alone"
            )

            client.unload_model("ident")
            client.unload_model("never_there")  # as in Triton: nothing to do is not an error
            assert not client.is_model_ready("ident")
            rows = [r for r in client.get_model_repository_index() if r["name"] == "ident"]
            assert rows == [
                {"name": "ident", "version": v, "state": "UNAVAILABLE", "reason": "unloaded"}
                for v in ("1", "2")
            ]
            assert client.is_server_ready(), "unloading on request does not make the server unready"
            with pytest.raises(InferenceServerException, match="'ident' has no available versions"):
                identity_infer(client, "ident", [1])
        finally:
            client.close()


def _broken_repository(root: Path) -> Path:
    models.write_onnx_identity(root, "good", "FP32", [-1], 8)
    models.write_onnx_model(root, "broken", BROKEN_ONNX, config=models.identity_config("broken"))
    return root


def test_exit_on_error_stops_start_up_with_a_broken_model(tmp_path: Path) -> None:
    repo = _broken_repository(tmp_path)
    result = subprocess.run(
        server_command(
            [
                "--model-repository",
                str(repo),
                "--http-port",
                "0",
                "--grpc-port",
                "0",
                "--metrics-port",
                "0",
            ]
        ),
        capture_output=True,
        text=True,
        timeout=120,
        env={**os.environ, "PYTHONUNBUFFERED": "1"},
    )
    assert result.returncode != 0
    assert "broken" in result.stderr


def test_exit_on_error_false_serves_the_others_and_strict_readiness_reports_it(
    tmp_path: Path,
) -> None:
    repo = _broken_repository(tmp_path)
    args = ["--model-repository", str(repo), "--exit-on-error=false"]
    with run_server(args, ready_path="/v2/health/live", services=("http",)) as server:
        client = httpclient.InferenceServerClient(server.http_url)
        try:
            assert client.is_server_live()
            assert not client.is_server_ready(), "strict readiness: a model failed to load"
            np.testing.assert_array_equal(identity_infer(client, "good", [5]), [[5]])
            (row,) = [r for r in client.get_model_repository_index() if r["name"] == "broken"]
            assert row["state"] == "UNAVAILABLE" and row["reason"]
            assert not client.is_model_ready("broken")
        finally:
            client.close()
    with run_server([*args, "--strict-readiness=false"], services=("http",)) as server:
        client = httpclient.InferenceServerClient(server.http_url)
        try:
            assert client.is_server_ready(), "without strict readiness, ready means serving"
        finally:
            client.close()


def _wait_until(check: Callable[[], bool], timeout: float = 60.0) -> None:
    deadline = time.monotonic() + timeout
    while not check():
        assert time.monotonic() < deadline, "condition not reached"
        time.sleep(0.05)  # polling the server, not waiting a fixed time


def test_poll_mode_follows_the_repository(tmp_path: Path) -> None:
    models.write_onnx_identity(tmp_path, "first", "FP32", [-1], 8)
    args = [
        "--model-repository",
        str(tmp_path),
        "--model-control-mode=poll",
        "--repository-poll-secs=0.2",
    ]
    with run_server(args, services=("http",)) as server:
        client = httpclient.InferenceServerClient(server.http_url)
        try:
            assert client.is_model_ready("first")
            with pytest.raises(
                InferenceServerException, match="explicit model load / unload is not allowed"
            ):
                client.load_model("first")
            # A new model appears.
            models.write_onnx_identity(tmp_path, "second", "FP32", [-1], 8)
            _wait_until(lambda: client.is_model_ready("second"))
            # A new version of an existing model is picked up.
            models.write_onnx_identity(tmp_path, "first", "FP32", [-1], 8, versions=(2,))
            _wait_until(lambda: client.get_model_metadata("first")["versions"] == ["2"])
            # A broken model is reported, and retried once its files change.
            models.write_onnx_model(
                tmp_path, "third", BROKEN_ONNX, config=models.identity_config("third")
            )
            _wait_until(
                lambda: any(
                    r["name"] == "third" and r.get("state") == "UNAVAILABLE"
                    for r in client.get_model_repository_index()
                )
            )
            models.write_onnx_identity(tmp_path, "third", "FP32", [-1], 8)
            _wait_until(lambda: client.is_model_ready("third"))
            # A removed model is unloaded and leaves the index.
            shutil.rmtree(tmp_path / "second")
            _wait_until(
                lambda: all(r["name"] != "second" for r in client.get_model_repository_index())
            )
            assert not client.is_model_ready("second")
            np.testing.assert_array_equal(identity_infer(client, "first", [7]), [[7]])
        finally:
            client.close()


def test_load_with_base64_file_content_over_raw_http(tmp_path: Path) -> None:
    """The wire form tritonclient sends: file contents base64 in the JSON parameters."""
    args = ["--model-repository", str(tmp_path), "--model-control-mode=explicit"]
    with run_server(args, services=("http",)) as server:
        config = {
            "backend": "onnxruntime",
            "max_batch_size": 8,
            "input": [{"name": "INPUT0", "data_type": "TYPE_FP32", "dims": [-1]}],
            "output": [{"name": "OUTPUT0", "data_type": "TYPE_FP32", "dims": [-1]}],
        }
        onnx = models.onnx_identity_model("FP32", [-1]).SerializeToString()
        body = {
            "parameters": {
                "config": json.dumps(config),
                "file:1/model.onnx": base64.b64encode(onnx).decode(),
            }
        }
        connection = http.client.HTTPConnection(server.http_url, timeout=60)
        connection.request("POST", "/v2/repository/models/up/load", body=json.dumps(body))
        response = connection.getresponse()
        assert (response.status, response.read()) == (200, b"")
        connection.close()
        client = httpclient.InferenceServerClient(server.http_url)
        try:
            np.testing.assert_array_equal(identity_infer(client, "up", [1, 2, 3]), [[1, 2, 3]])
            assert client.get_model_config("up")["max_batch_size"] == 8
        finally:
            client.close()


def test_ensemble_model_is_unavailable_with_its_reason(tmp_path: Path) -> None:
    """Ensembles are not served yet: the model says so in the index, the others serve."""
    models.copy_bundled_model(tmp_path, "simple")
    (tmp_path / "ens" / "1").mkdir(parents=True)
    models.write_config(
        tmp_path,
        "ens",
        """
name: "ens"
platform: "ensemble"
max_batch_size: 8
input [ { name: "A" data_type: TYPE_INT32 dims: [ 16 ] } ]
output [ { name: "S" data_type: TYPE_INT32 dims: [ 16 ] } ]
ensemble_scheduling { step [ { model_name: "simple" model_version: -1
  input_map { key: "INPUT0" value: "A" } input_map { key: "INPUT1" value: "A" }
  output_map { key: "OUTPUT0" value: "S" } } ] }
""",
    )
    args = ["--model-repository", str(tmp_path), "--exit-on-error=false"]
    with run_server(args, ready_path="/v2/health/live", services=("http",)) as server:
        client = httpclient.InferenceServerClient(server.http_url)
        index = {row["name"]: row for row in client.get_model_repository_index()}
        assert index["ens"]["state"] == "UNAVAILABLE"
        assert "does not run ensembles" in index["ens"]["reason"]
        assert index["simple"]["state"] == "READY"
        assert client.is_model_ready("simple")
