"""CUDA shared memory over HTTP and gRPC, as tritonclient's register/status/unregister calls
and shared-memory tensor parameters use it.

Without a GPU, one server runs with host memory standing in for device memory: a
``sitecustomize`` module on its PYTHONPATH swaps ``server.cuda_ipc``'s default layer for
``HostIpc`` before the core is built, and a handle names a POSIX shared memory object this
test writes and reads. Another server, unmodified and shown no device, must refuse
registration and say why.
"""

from __future__ import annotations

import base64
import os
import uuid
from collections.abc import Iterator
from multiprocessing import shared_memory
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import tritonclient.grpc as grpcclient
import tritonclient.http as httpclient
from tritonclient.utils import InferenceServerException

from server.cuda_ipc import host_handle
from tests.harness import ServerProcess, run_server
from tests.models import ROOT, copy_bundled_model

PROTOCOLS = ("http", "grpc")
STATUS = {
    "http": {"INVALID_ARG": "400", "NOT_FOUND": "404", "UNSUPPORTED": "501", "INTERNAL": "500"},
    "grpc": {
        "INVALID_ARG": "StatusCode.INVALID_ARGUMENT",
        "NOT_FOUND": "StatusCode.NOT_FOUND",
        "UNSUPPORTED": "StatusCode.UNIMPLEMENTED",
        "INTERNAL": "StatusCode.INTERNAL",
    },
}
HOOK = "from server import cuda_ipc\ncuda_ipc.set_default_layer(cuda_ipc.HostIpc(devices=1))\n"


def _pythonpath(*entries: Path) -> str:
    existing = os.environ.get("PYTHONPATH")
    return os.pathsep.join([*(str(e) for e in entries), *([existing] if existing else [])])


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    repo = tmp_path_factory.mktemp("cuda_shm_repo")
    copy_bundled_model(repo, "simple")
    hook = tmp_path_factory.mktemp("cuda_shm_hook")
    (hook / "sitecustomize.py").write_text(HOOK)
    env = {"PYTHONPATH": _pythonpath(hook, ROOT)}
    with run_server(["--model-repository", str(repo), "--allow-client-shm=true"], env=env) as srv:
        yield srv


@pytest.fixture(params=PROTOCOLS)
def protocol(request: pytest.FixtureRequest) -> str:
    return str(request.param)


def make_client(protocol: str, srv: ServerProcess) -> Any:
    if protocol == "http":
        return httpclient.InferenceServerClient(srv.http_url)
    return grpcclient.InferenceServerClient(srv.grpc_url)


@pytest.fixture
def client(protocol: str, server: ServerProcess) -> Iterator[Any]:
    c = make_client(protocol, server)
    try:
        yield c
    finally:
        c.unregister_cuda_shared_memory()
        c.close()


@pytest.fixture
def device_memory() -> Iterator[Any]:
    made: list[shared_memory.SharedMemory] = []

    def allocate(size: int) -> tuple[shared_memory.SharedMemory, bytes]:
        block = shared_memory.SharedMemory(
            name=f"cudatest_{uuid.uuid4().hex[:12]}", create=True, size=size
        )
        made.append(block)
        return block, base64.b64encode(host_handle(block.name))

    yield allocate
    for block in made:
        block.close()
        block.unlink()


def status(client: Any, protocol: str, name: str = "") -> list[dict[str, Any]]:
    answer = client.get_cuda_shared_memory_status(name)
    if protocol == "http":
        return sorted(answer, key=lambda r: r["name"])
    rows = [
        {"name": r.name, "device_id": r.device_id, "byte_size": r.byte_size}
        for r in answer.regions.values()
    ]
    return sorted(rows, key=lambda r: r["name"])


def error_of(call: Any, *args: Any) -> InferenceServerException:
    with pytest.raises(InferenceServerException) as info:
        call(*args)
    return info.value


def module_of(protocol: str) -> Any:
    return httpclient if protocol == "http" else grpcclient


def test_register_status_unregister(client: Any, protocol: str, device_memory: Any) -> None:
    _, handle_a = device_memory(256)
    _, handle_b = device_memory(64)
    client.register_cuda_shared_memory("a", handle_a, 0, 256)
    client.register_cuda_shared_memory("b", handle_b, 0, 64)
    assert status(client, protocol) == [
        {"name": "a", "device_id": 0, "byte_size": 256},
        {"name": "b", "device_id": 0, "byte_size": 64},
    ]
    assert status(client, protocol, "b") == [{"name": "b", "device_id": 0, "byte_size": 64}]

    duplicate = error_of(client.register_cuda_shared_memory, "b", handle_b, 0, 64)
    assert "shared memory region 'b' already in manager" == duplicate.message()
    short = base64.b64encode(b"\0" * 16)
    bad_handle = error_of(client.register_cuda_shared_memory, "c", short, 0, 64)
    assert bad_handle.status() == STATUS[protocol]["INVALID_ARG"]
    assert "64-byte" in bad_handle.message()
    bad_device = error_of(client.register_cuda_shared_memory, "c", handle_b, 3, 64)
    assert bad_device.status() == STATUS[protocol]["INVALID_ARG"]
    assert "invalid device id 3" in bad_device.message()

    client.unregister_cuda_shared_memory("b")
    client.unregister_cuda_shared_memory("never_registered")
    assert [r["name"] for r in status(client, protocol)] == ["a"]
    unknown = error_of(client.get_cuda_shared_memory_status, "b")
    assert (unknown.status(), unknown.message()) == (
        STATUS[protocol]["NOT_FOUND"],
        "Unable to find cuda shared memory region: 'b'",
    )
    client.unregister_cuda_shared_memory()
    assert status(client, protocol) == []


def test_inputs_and_outputs_in_device_memory(
    client: Any, protocol: str, device_memory: Any
) -> None:
    inputs, in_handle = device_memory(256)
    outputs, out_handle = device_memory(512)
    a = np.arange(16, dtype=np.int32)
    b = np.full(16, 5, dtype=np.int32)
    np.frombuffer(inputs.buf, dtype=np.int32, count=16, offset=64)[:] = a
    np.frombuffer(inputs.buf, dtype=np.int32, count=16, offset=128)[:] = b
    client.register_cuda_shared_memory("in", in_handle, 0, 256)
    client.register_cuda_shared_memory("out", out_handle, 0, 512)

    mod = module_of(protocol)
    tensors = [
        mod.InferInput("INPUT0", [1, 16], "INT32"),
        mod.InferInput("INPUT1", [1, 16], "INT32"),
    ]
    tensors[0].set_shared_memory("in", 64, 64)
    tensors[1].set_shared_memory("in", 64, 128)
    requested = [mod.InferRequestedOutput("OUTPUT0"), mod.InferRequestedOutput("OUTPUT1")]
    requested[0].set_shared_memory("out", 64, 0)
    requested[1].set_shared_memory("out", 64, 256)
    client.infer("simple", tensors, outputs=requested)
    np.testing.assert_array_equal(
        np.frombuffer(outputs.buf, dtype=np.int32, count=16, offset=0), a + b
    )
    np.testing.assert_array_equal(
        np.frombuffer(outputs.buf, dtype=np.int32, count=16, offset=256), a - b
    )

    tensors[0].set_shared_memory("in", 64, 224)
    beyond = error_of(client.infer, "simple", tensors)
    assert (beyond.status(), beyond.message()) == (
        STATUS[protocol]["INVALID_ARG"],
        "Invalid offset + byte size for shared memory region: 'in'",
    )


def test_server_without_a_device_says_why(tmp_path: Path) -> None:
    copy_bundled_model(tmp_path, "simple")
    args = ["--model-repository", str(tmp_path), "--allow-client-shm=true"]
    # Shown no device, the server cannot open a handle whether or not the machine has GPUs.
    with run_server(args, env={"CUDA_VISIBLE_DEVICES": ""}) as srv:
        handle = base64.b64encode(b"\1" * 64)
        for protocol in PROTOCOLS:
            c = make_client(protocol, srv)
            error = error_of(c.register_cuda_shared_memory, "r", handle, 0, 64)
            assert error.status() == STATUS[protocol]["UNSUPPORTED"]
            assert error.message().startswith("failed to register CUDA shared memory region 'r': ")
            assert "use system shared memory" in error.message()
            assert status(c, protocol) == []
            assert (
                error_of(c.get_cuda_shared_memory_status, "r").status()
                == (STATUS[protocol]["NOT_FOUND"])
            )
            c.unregister_cuda_shared_memory("r")
            c.unregister_cuda_shared_memory()
            c.close()
