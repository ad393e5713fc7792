"""gRPC over TLS with Triton's flags: --grpc-use-ssl (server certificate) and
--grpc-use-ssl-mutual (client certificates checked against --grpc-root-cert), driven by
tritonclient's own ssl options."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import tritonclient.grpc as grpcclient
import tritonclient.grpc.aio as aioclient
import trustme
from tritonclient.utils import InferenceServerException

from tests.harness import run_server
from tests.models import copy_bundled_model


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    folder = tmp_path_factory.mktemp("pki")
    ca = trustme.CA()
    server = ca.issue_cert("127.0.0.1", "localhost")
    client = ca.issue_cert("client@example.com")
    paths = {
        "ca": folder / "ca.pem",
        "server_cert": folder / "server.pem",
        "server_key": folder / "server.key",
        "client_cert": folder / "client.pem",
        "client_key": folder / "client.key",
    }
    ca.cert_pem.write_to_path(str(paths["ca"]))
    server.private_key_pem.write_to_path(str(paths["server_key"]))
    server.cert_chain_pems[0].write_to_path(str(paths["server_cert"]))
    client.private_key_pem.write_to_path(str(paths["client_key"]))
    client.cert_chain_pems[0].write_to_path(str(paths["client_cert"]))
    return paths


def _inputs() -> list[grpcclient.InferInput]:
    values = np.arange(16, dtype=np.float32).reshape(1, 16)
    tensor = grpcclient.InferInput("INPUT0", [1, 16], "FP32")
    tensor.set_data_from_numpy(values)
    return [tensor]


def _tls_args(repo: Path, pki: dict[str, Path], mode: str) -> list[str]:
    copy_bundled_model(repo, "identity_fp32")
    return [
        "--model-repository",
        str(repo),
        mode,
        "--grpc-server-cert",
        str(pki["server_cert"]),
        "--grpc-server-key",
        str(pki["server_key"]),
    ]


def test_server_certificate(tmp_path: Path, pki: dict[str, Path]) -> None:
    args = _tls_args(tmp_path, pki, "--grpc-use-ssl")
    with run_server(args, services=("http", "grpc")) as server:
        with grpcclient.InferenceServerClient(
            server.grpc_url, ssl=True, root_certificates=str(pki["ca"])
        ) as client:
            assert client.is_server_ready()
            out = client.infer("identity_fp32", _inputs()).as_numpy("OUTPUT0")
            np.testing.assert_array_equal(out, np.arange(16, dtype=np.float32).reshape(1, 16))
            # 2 MiB each way: large frames arrive in pieces of TLS records, the answer goes
            # out in pieces.
            big = np.random.default_rng(0).random((1, 1 << 19), dtype=np.float32)
            tensor = grpcclient.InferInput("INPUT0", list(big.shape), "FP32")
            tensor.set_data_from_numpy(big)
            for _ in range(3):
                out = client.infer("identity_fp32", [tensor]).as_numpy("OUTPUT0")
                np.testing.assert_array_equal(out, big)
        # A plaintext client is not served on the TLS port; the server goes on serving.
        with grpcclient.InferenceServerClient(server.grpc_url) as plain:
            with pytest.raises(InferenceServerException):
                plain.is_server_live(client_timeout=5)
        with grpcclient.InferenceServerClient(
            server.grpc_url, ssl=True, root_certificates=str(pki["ca"])
        ) as client:
            assert client.is_server_live()


async def test_mutual_tls(tmp_path: Path, pki: dict[str, Path]) -> None:
    args = _tls_args(tmp_path, pki, "--grpc-use-ssl-mutual")
    args += ["--grpc-root-cert", str(pki["ca"])]
    with run_server(args, services=("http", "grpc")) as server:
        async with aioclient.InferenceServerClient(
            server.grpc_url,
            ssl=True,
            root_certificates=str(pki["ca"]),
            private_key=str(pki["client_key"]),
            certificate_chain=str(pki["client_cert"]),
        ) as client:
            assert await client.is_server_ready()
            result = await client.infer("identity_fp32", _inputs())
            assert result.as_numpy("OUTPUT0").shape == (1, 16)
        # Without a client certificate the handshake fails.
        async with aioclient.InferenceServerClient(
            server.grpc_url, ssl=True, root_certificates=str(pki["ca"])
        ) as anonymous:
            with pytest.raises(InferenceServerException):
                await anonymous.is_server_live(client_timeout=5)


def test_missing_certificate_flags_stop_the_server(tmp_path: Path) -> None:
    copy_bundled_model(tmp_path, "identity_fp32")
    args = ["--model-repository", str(tmp_path), "--grpc-use-ssl"]
    with pytest.raises(RuntimeError) as failed:
        with run_server(args, services=("http", "grpc"), timeout=30):
            pass
    assert "--grpc-use-ssl requires --grpc-server-cert" in str(failed.value)
