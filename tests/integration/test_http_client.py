"""tritonclient.http, sync and aio, over every endpoint of the bundled model repository, the
way Triton's own client examples use them (simple infer, string infer, async, statistics,
classification)."""

from __future__ import annotations

import asyncio
import gzip
import http.client
import json
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
import tritonclient.http as httpclient
import tritonclient.http.aio as aioclient
from tritonclient.utils import InferenceServerException

from tests import models
from tests.harness import ServerProcess, run_server

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    repo = tmp_path_factory.mktemp("repo")
    for name in ("simple", "identity_fp32", "digits_classifier"):
        models.copy_bundled_model(repo, name)
    for datatype in models.IDENTITY_DATATYPES:
        models.write_onnx_identity(repo, f"id_{datatype.lower()}", datatype, [-1], 8)
    models.write_onnx_identity(
        repo,
        "versions",
        "FP32",
        [-1],
        0,
        versions=(1, 2, 3),
        config_extra="version_policy { all { } }",
    )
    with run_server(["--model-repository", str(repo)], services=("http",)) as process:
        yield process


@pytest.fixture
def client(server: ServerProcess) -> Iterator[httpclient.InferenceServerClient]:
    c = httpclient.InferenceServerClient(server.http_url)
    yield c
    c.close()


def simple_inputs(
    binary: bool = True,
) -> tuple[list[httpclient.InferInput], np.ndarray, np.ndarray]:
    a = np.arange(16, dtype=np.int32).reshape(1, 16)
    b = np.ones((1, 16), dtype=np.int32)
    tensors = [
        httpclient.InferInput("INPUT0", [1, 16], "INT32"),
        httpclient.InferInput("INPUT1", [1, 16], "INT32"),
    ]
    tensors[0].set_data_from_numpy(a, binary_data=binary)
    tensors[1].set_data_from_numpy(b, binary_data=binary)
    return tensors, a, b


def test_health_and_server_metadata(client: httpclient.InferenceServerClient) -> None:
    assert client.is_server_live() and client.is_server_ready()
    metadata = client.get_server_metadata()
    assert metadata["name"] == "triton"
    assert {"binary_tensor_data", "classification", "model_repository", "statistics"} <= set(
        metadata["extensions"]
    )


def test_model_metadata_config_and_ready(client: httpclient.InferenceServerClient) -> None:
    assert client.is_model_ready("simple") and client.is_model_ready("simple", "1")
    assert not client.is_model_ready("simple", "2")
    assert not client.is_model_ready("nope")
    metadata = client.get_model_metadata("simple")
    assert metadata == client.get_model_metadata("simple", "1")
    assert metadata["versions"] == ["1"] and metadata["platform"] == "onnxruntime_onnx"
    assert metadata["inputs"][0] == {"name": "INPUT0", "datatype": "INT32", "shape": [-1, 16]}
    assert client.get_model_metadata("versions")["versions"] == ["1", "2", "3"]
    assert client.get_model_metadata("versions", "2")["versions"] == ["2"]
    config = client.get_model_config("simple")
    assert config["max_batch_size"] == 8 and config["dynamic_batching"]["preferred_batch_size"] == [
        8
    ]
    assert config["input"][0]["dims"] == [16]
    assert client.get_model_config("versions", "3")["version_policy"] == {"all": {}}
    with pytest.raises(
        InferenceServerException, match="Request for unknown model: 'nope' is not found"
    ):
        client.get_model_metadata("nope")
    with pytest.raises(InferenceServerException, match="'simple' version 2 is not found"):
        client.get_model_config("simple", "2")


@pytest.mark.parametrize("binary", [True, False])
def test_simple_infer(client: httpclient.InferenceServerClient, binary: bool) -> None:
    tensors, a, b = simple_inputs(binary)
    outputs = [
        httpclient.InferRequestedOutput("OUTPUT0", binary_data=binary),
        httpclient.InferRequestedOutput("OUTPUT1", binary_data=not binary),
    ]
    result = client.infer(
        "simple", tensors, outputs=outputs, request_id="r1", parameters={"note": "x", "n": 2}
    )
    np.testing.assert_array_equal(result.as_numpy("OUTPUT0"), a + b)
    np.testing.assert_array_equal(result.as_numpy("OUTPUT1"), a - b)
    assert result.get_response()["id"] == "r1"


@pytest.mark.parametrize("datatype", models.IDENTITY_DATATYPES)
def test_every_datatype_round_trips(
    client: httpclient.InferenceServerClient, datatype: str
) -> None:
    data = models.sample_array(datatype, (2, 3))
    tensor = httpclient.InferInput("INPUT0", [2, 3], datatype)
    if datatype == "BF16":
        # The raw patterns as floats, which BF16 holds exactly.
        floats = (data.astype(np.uint32) << 16).view(np.float32)
        tensor.set_data_from_numpy(models.bf16_client_array(floats))
        result = client.infer("id_bf16", [tensor])
        np.testing.assert_array_equal(result.as_numpy("OUTPUT0").astype(np.float32), floats)
        return
    tensor.set_data_from_numpy(data)
    result = client.infer(f"id_{datatype.lower()}", [tensor])
    np.testing.assert_array_equal(result.as_numpy("OUTPUT0"), data)
    if datatype == "FP16":
        return
    tensor.set_data_from_numpy(data, binary_data=False)
    json_result = client.infer(
        f"id_{datatype.lower()}",
        [tensor],
        outputs=[httpclient.InferRequestedOutput("OUTPUT0", binary_data=False)],
    )
    expected = np.vectorize(bytes.decode)(data) if datatype == "BYTES" else data
    # tritonclient returns JSON strings as str, not bytes.
    np.testing.assert_array_equal(json_result.as_numpy("OUTPUT0"), expected)


def test_string_infer(client: httpclient.InferenceServerClient) -> None:
    words = np.array([["caf\u00e9".encode(), b""], [b"tab\tnew\nline", b"x" * 300]], dtype=object)
    tensor = httpclient.InferInput("INPUT0", [2, 2], "BYTES")
    tensor.set_data_from_numpy(words)
    np.testing.assert_array_equal(client.infer("id_bytes", [tensor]).as_numpy("OUTPUT0"), words)


def test_non_utf8_strings_are_refused_by_onnxruntime(
    client: httpclient.InferenceServerClient,
) -> None:
    # onnxruntime's Python API takes string tensors only as str, so bytes that are not UTF-8
    # cannot reach the model unchanged: a 400 naming the input, not a 500.
    words = np.array([b"\x00\xff", b"\xc3"], dtype=object).reshape(1, 2)
    tensor = httpclient.InferInput("INPUT0", [1, 2], "BYTES")
    tensor.set_data_from_numpy(words)
    with pytest.raises(InferenceServerException) as caught:
        client.infer("id_bytes", [tensor])
    assert caught.value.status() == "400"
    assert caught.value.message().startswith(
        "input 'INPUT0' of model 'id_bytes': element 0 is not valid UTF-8"
    )


def test_classification_with_labels(client: httpclient.InferenceServerClient) -> None:
    from sklearn.datasets import load_digits

    digits = load_digits()
    pixels = digits.data[:4].astype(np.float32)
    tensor = httpclient.InferInput("pixels", [4, 64], "FP32")
    tensor.set_data_from_numpy(pixels)
    labels = (ROOT / "model_repository" / "digits_classifier" / "labels.txt").read_text().split()
    result = client.infer(
        "digits_classifier",
        [tensor],
        outputs=[httpclient.InferRequestedOutput("probabilities", class_count=3)],
    )
    top = result.as_numpy("probabilities")
    assert top.shape == (4, 3)
    for row, truth in zip(top, digits.target[:4], strict=True):
        value, index, label = row[0].decode().split(":")
        assert int(index) == truth and label == labels[truth]
        assert 0.0 < float(value) <= 1.0


def test_compression_both_ways(
    server: ServerProcess, client: httpclient.InferenceServerClient
) -> None:
    tensors, a, b = simple_inputs()
    for algorithm in ("gzip", "deflate"):
        result = client.infer(
            "simple",
            tensors,
            request_compression_algorithm=algorithm,
            response_compression_algorithm=algorithm,
        )
        np.testing.assert_array_equal(result.as_numpy("OUTPUT0"), a + b)
    connection = http.client.HTTPConnection(server.http_url, timeout=30)
    body = json.dumps(
        {"inputs": [{"name": "INPUT0", "datatype": "FP32", "shape": [1, 2], "data": [1, 2]}]}
    ).encode()
    connection.request(
        "POST", "/v2/models/identity_fp32/infer", body=body, headers={"Accept-Encoding": "gzip"}
    )
    response = connection.getresponse()
    assert response.getheader("Content-Encoding") == "gzip"
    assert json.loads(gzip.decompress(response.read()))["outputs"][0]["data"] == [1.0, 2.0]
    connection.close()


def test_compression_of_large_bodies_both_ways(client: httpclient.InferenceServerClient) -> None:
    # Bodies this large are inflated and deflated on a worker thread, not on the event loop.
    data = np.random.default_rng(3).standard_normal((1, 200_000)).astype(np.float32)
    tensor = httpclient.InferInput("INPUT0", list(data.shape), "FP32")
    tensor.set_data_from_numpy(data, binary_data=True)
    wanted = [httpclient.InferRequestedOutput("OUTPUT0", binary_data=True)]
    for algorithm in ("gzip", "deflate"):
        result = client.infer(
            "identity_fp32",
            [tensor],
            outputs=wanted,
            request_compression_algorithm=algorithm,
            response_compression_algorithm=algorithm,
        )
        np.testing.assert_array_equal(result.as_numpy("OUTPUT0"), data)


def test_statistics_shape(client: httpclient.InferenceServerClient) -> None:
    tensors, _, _ = simple_inputs()
    before = client.get_inference_statistics("simple")["model_stats"][0]
    client.infer("simple", tensors)
    stats = client.get_inference_statistics("simple", "1")["model_stats"][0]
    assert stats["name"] == "simple" and stats["version"] == "1"
    assert stats["inference_count"] == before["inference_count"] + 1
    for key in (
        "success",
        "fail",
        "queue",
        "compute_input",
        "compute_infer",
        "compute_output",
        "cache_hit",
        "cache_miss",
    ):
        assert set(stats["inference_stats"][key]) == {"count", "ns"}
    assert stats["inference_stats"]["success"]["ns"] > 0
    assert {b["batch_size"] for b in stats["batch_stats"]} >= {1}
    everything = client.get_inference_statistics()["model_stats"]
    assert ("versions", "2") in {(m["name"], m["version"]) for m in everything}
    with pytest.raises(InferenceServerException, match="requested model 'nope' is not available"):
        client.get_inference_statistics("nope")


def test_repository_index(client: httpclient.InferenceServerClient) -> None:
    index = client.get_model_repository_index()
    assert {"name": "simple", "version": "1", "state": "READY"} in index
    assert [row for row in index if row["name"] == "versions"] == [
        {"name": "versions", "version": str(v), "state": "READY"} for v in (1, 2, 3)
    ]
    with pytest.raises(
        InferenceServerException, match="explicit model load / unload is not allowed"
    ):
        client.load_model("simple")


def test_async_client(server: ServerProcess) -> None:
    async def run() -> None:
        client = aioclient.InferenceServerClient(server.http_url)
        try:
            assert await client.is_server_live() and await client.is_server_ready()
            assert (await client.get_server_metadata())["name"] == "triton"
            assert await client.is_model_ready("simple")
            assert (await client.get_model_metadata("simple", "1"))["name"] == "simple"
            assert (await client.get_model_config("simple"))["name"] == "simple"
            assert (await client.get_inference_statistics("simple"))["model_stats"]
            assert await client.get_model_repository_index()
            a = np.arange(16, dtype=np.int32).reshape(1, 16)
            requests = []
            for i in range(8):
                tensors = [
                    aioclient.InferInput("INPUT0", [1, 16], "INT32"),
                    aioclient.InferInput("INPUT1", [1, 16], "INT32"),
                ]
                tensors[0].set_data_from_numpy(a)
                tensors[1].set_data_from_numpy(np.full((1, 16), i, np.int32))
                requests.append(client.infer("simple", tensors, request_id=str(i)))
            for i, result in enumerate(await asyncio.gather(*requests)):
                np.testing.assert_array_equal(result.as_numpy("OUTPUT1"), a - i)
                assert result.get_response()["id"] == str(i)
            with pytest.raises(InferenceServerException, match="not found"):
                await client.infer("nope", [])
        finally:
            await client.close()

    asyncio.run(run())


def test_sync_client_async_infer(client: httpclient.InferenceServerClient) -> None:
    tensors, a, b = simple_inputs()
    pending = [client.async_infer("simple", tensors) for _ in range(4)]
    for handle in pending:
        np.testing.assert_array_equal(handle.get_result().as_numpy("OUTPUT0"), a + b)
