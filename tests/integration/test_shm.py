"""System shared memory over HTTP and gRPC, as tritonclient.utils.shared_memory uses it."""

from __future__ import annotations

import re
import shutil
import struct
import uuid
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import tritonclient.grpc as grpcclient
import tritonclient.http as httpclient
import tritonclient.utils.shared_memory as shared_memory
from tritonclient.utils import InferenceServerException

from tests.harness import ServerProcess, run_server
from tests.models import ROOT, copy_bundled_model, write_onnx_identity

PROTOCOLS = ("http", "grpc")
# The status each protocol reports for our error codes.
STATUS = {
    "http": {
        "INVALID_ARG": "400",
        "NOT_FOUND": "404",
        "INTERNAL": "500",
        "UNSUPPORTED": "501",
        "ALREADY_EXISTS": "400",
    },
    "grpc": {
        "INVALID_ARG": "StatusCode.INVALID_ARGUMENT",
        "NOT_FOUND": "StatusCode.NOT_FOUND",
        "INTERNAL": "StatusCode.INTERNAL",
        "UNSUPPORTED": "StatusCode.UNIMPLEMENTED",
        "ALREADY_EXISTS": "StatusCode.ALREADY_EXISTS",
    },
}


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    repo = tmp_path_factory.mktemp("shm_repo")
    copy_bundled_model(repo, "simple")
    write_onnx_identity(
        repo, "identity_bytes", "BYTES", (-1,), max_batch_size=0, dynamic_batching=False
    )
    shutil.copytree(ROOT / "tests" / "python_models" / "py_sleep", repo / "py_sleep")
    with run_server(["--model-repository", str(repo), "--allow-client-shm=true"]) as srv:
        yield srv


def make_client(protocol: str, srv: ServerProcess) -> Any:
    if protocol == "http":
        return httpclient.InferenceServerClient(srv.http_url)
    return grpcclient.InferenceServerClient(srv.grpc_url)


@pytest.fixture(params=PROTOCOLS)
def protocol(request: pytest.FixtureRequest) -> str:
    return str(request.param)


@pytest.fixture
def client(protocol: str, server: ServerProcess) -> Iterator[Any]:
    c = make_client(protocol, server)
    try:
        yield c
    finally:
        c.unregister_system_shared_memory()
        c.close()


@pytest.fixture
def regions() -> Iterator[Any]:
    """``regions(size)`` creates a POSIX region with a unique key; all are destroyed after."""
    made: list[Any] = []

    def create(size: int) -> tuple[Any, str]:
        key = f"/shmtest_{uuid.uuid4().hex[:12]}"
        handle = shared_memory.create_shared_memory_region(key.strip("/"), key, size)
        made.append(handle)
        return handle, key

    yield create
    for handle in made:
        shared_memory.destroy_shared_memory_region(handle)


def status(client: Any, protocol: str, name: str = "") -> list[dict[str, Any]]:
    answer = client.get_system_shared_memory_status(name)
    if protocol == "http":
        return sorted(answer, key=lambda r: r["name"])
    rows = [
        {"name": r.name, "key": r.key, "offset": r.offset, "byte_size": r.byte_size}
        for r in answer.regions.values()
    ]
    return sorted(rows, key=lambda r: r["name"])


def error_of(call: Any, *args: Any, **kwargs: Any) -> InferenceServerException:
    with pytest.raises(InferenceServerException) as info:
        call(*args, **kwargs)
    return info.value


def module_of(protocol: str) -> Any:
    return httpclient if protocol == "http" else grpcclient


def shm_inputs(
    protocol: str, region: str, offsets: tuple[int, int] = (0, 64), size: int = 64
) -> list[Any]:
    mod = module_of(protocol)
    inputs = [
        mod.InferInput("INPUT0", [1, 16], "INT32"),
        mod.InferInput("INPUT1", [1, 16], "INT32"),
    ]
    inputs[0].set_shared_memory(region, size, offsets[0])
    inputs[1].set_shared_memory(region, 64, offsets[1])
    return inputs


def shm_output(protocol: str, name: str, region: str, size: int = 64, offset: int = 0) -> Any:
    output = module_of(protocol).InferRequestedOutput(name)
    output.set_shared_memory(region, size, offset)
    return output


def test_shared_memory_is_off_unless_allowed(tmp_path: Path, regions: Any) -> None:
    copy_bundled_model(tmp_path, "simple")
    _, key = regions(64)
    with run_server(["--model-repository", str(tmp_path)], services=("http", "grpc")) as srv:
        for protocol in PROTOCOLS:
            c = make_client(protocol, srv)
            for call, args in (
                (c.register_system_shared_memory, ("r", key, 64)),
                (c.get_system_shared_memory_status, ()),
                (c.unregister_system_shared_memory, ()),
                (c.get_cuda_shared_memory_status, ()),
            ):
                error = error_of(call, *args)
                assert error.status() == STATUS[protocol]["UNSUPPORTED"]
                assert "--allow-client-shm=true" in error.message()
            inputs = shm_inputs(protocol, "r")
            assert "--allow-client-shm=true" in error_of(c.infer, "simple", inputs).message()
            c.close()


def test_register_status_unregister(client: Any, protocol: str, regions: Any) -> None:
    _, key_a = regions(8192)
    _, key_b = regions(128)
    client.register_system_shared_memory("a", key_a, 4096, offset=4096)
    client.register_system_shared_memory("b", key_b, 128)
    client.register_system_shared_memory("b_tail", key_b, 64, offset=64)
    assert status(client, protocol) == [
        {"name": "a", "key": key_a, "offset": 4096, "byte_size": 4096},
        {"name": "b", "key": key_b, "offset": 0, "byte_size": 128},
        {"name": "b_tail", "key": key_b, "offset": 64, "byte_size": 64},
    ]
    assert status(client, protocol, "b") == [
        {"name": "b", "key": key_b, "offset": 0, "byte_size": 128}
    ]

    duplicate = error_of(client.register_system_shared_memory, "b", key_b, 16)
    assert (duplicate.status(), duplicate.message()) == (
        STATUS[protocol]["ALREADY_EXISTS"],
        "shared memory region 'b' already in manager",
    )
    missing = error_of(client.register_system_shared_memory, "c", "/shmtest_missing_key", 16)
    assert (missing.status(), missing.message()) == (
        STATUS[protocol]["INTERNAL"],
        "Unable to open shared memory region: '/shmtest_missing_key'",
    )
    too_big = error_of(client.register_system_shared_memory, "c", key_b, 256)
    assert too_big.status() == STATUS[protocol]["INVALID_ARG"] and "'c'" in too_big.message()

    client.unregister_system_shared_memory("b")
    client.unregister_system_shared_memory("never_registered")
    assert [r["name"] for r in status(client, protocol)] == ["a", "b_tail"]
    unknown = error_of(client.get_system_shared_memory_status, "b")
    assert (unknown.status(), unknown.message()) == (
        STATUS[protocol]["NOT_FOUND"],
        "Unable to find system shared memory region: 'b'",
    )
    client.unregister_system_shared_memory()
    assert status(client, protocol) == []


def test_inputs_and_outputs_in_shared_memory(client: Any, protocol: str, regions: Any) -> None:
    inputs_handle, in_key = regions(128)
    outputs_handle, out_key = regions(4096 + 256)
    a = np.arange(16, dtype=np.int32)
    b = np.full(16, 5, dtype=np.int32)
    shared_memory.set_shared_memory_region(inputs_handle, [a, b])
    client.register_system_shared_memory("in", in_key, 128)
    client.register_system_shared_memory("out", out_key, 256, offset=4096)

    outputs = [
        shm_output(protocol, "OUTPUT0", "out", 64, 0),
        shm_output(protocol, "OUTPUT1", "out", 64, 128),
    ]
    result = client.infer("simple", shm_inputs(protocol, "in"), outputs=outputs)
    # The data is in the region, not in the response.
    if protocol == "http":
        described = [sorted(o) for o in result.get_response()["outputs"]]
        assert described == [["datatype", "name", "shape"]] * 2
    else:
        assert list(result.get_response().raw_output_contents) == [b"", b""]
    sums = shared_memory.get_contents_as_numpy(outputs_handle, np.int32, [16], offset=4096)
    diffs = shared_memory.get_contents_as_numpy(outputs_handle, np.int32, [16], offset=4096 + 128)
    np.testing.assert_array_equal(sums, a + b)
    np.testing.assert_array_equal(diffs, a - b)

    # One output in the region, the other in the response.
    plain = module_of(protocol).InferRequestedOutput("OUTPUT1")
    result = client.infer(
        "simple",
        shm_inputs(protocol, "in"),
        outputs=[shm_output(protocol, "OUTPUT0", "out", 64, 64), plain],
    )
    np.testing.assert_array_equal(result.as_numpy("OUTPUT1").reshape(16), a - b)
    np.testing.assert_array_equal(
        shared_memory.get_contents_as_numpy(outputs_handle, np.int32, [16], offset=4096 + 64), a + b
    )


def test_bytes_input_from_shared_memory(client: Any, protocol: str, regions: Any) -> None:
    handle, key = regions(256)
    words = np.array([b"one", b"", b"three"], dtype=object)
    layout = b"".join(struct.pack("<I", len(w)) + w for w in words)
    shared_memory.set_shared_memory_region(handle, [np.frombuffer(layout, dtype=np.uint8)])
    client.register_system_shared_memory("words", key, 256)
    tensor = module_of(protocol).InferInput("INPUT0", [3], "BYTES")
    tensor.set_shared_memory("words", 4 * 3 + 8)
    assert client.infer("identity_bytes", [tensor]).as_numpy("OUTPUT0").tolist() == words.tolist()


def test_bounds_and_unknown_regions(client: Any, protocol: str, regions: Any) -> None:
    _, key = regions(128)
    client.register_system_shared_memory("in", key, 128)
    st = STATUS[protocol]
    cases = [
        (
            shm_inputs(protocol, "in", (128, 0)),
            [],
            st["INVALID_ARG"],
            "Invalid offset for shared memory region: 'in'",
        ),
        (
            shm_inputs(protocol, "in", (100, 0)),
            [],
            st["INVALID_ARG"],
            "Invalid offset + byte size for shared memory region: 'in'",
        ),
        (
            shm_inputs(protocol, "nope"),
            [],
            st["NOT_FOUND"],
            "Unable to find shared memory region: 'nope'",
        ),
        (
            shm_inputs(protocol, "in", size=60),
            [],
            st["INVALID_ARG"],
            "[request id: <id_unknown>] input byte size mismatch for input 'INPUT0' for model 'simple'. Expected 64, got 60",
        ),
        (
            shm_inputs(protocol, "in"),
            [shm_output(protocol, "OUTPUT0", "in", 64, 96)],
            st["INVALID_ARG"],
            "Invalid offset + byte size for shared memory region: 'in'",
        ),
        (
            shm_inputs(protocol, "in"),
            [shm_output(protocol, "OUTPUT0", "gone", 64)],
            st["NOT_FOUND"],
            "Unable to find shared memory region: 'gone'",
        ),
        (
            shm_inputs(protocol, "in"),
            [shm_output(protocol, "OUTPUT0", "in", 32)],
            st["INTERNAL"],
            "shared memory size specified with the request for output 'OUTPUT0' (32 bytes) should be at least 64 bytes to hold the results",
        ),
    ]
    for inputs, outputs, code, message in cases:
        error = error_of(client.infer, "simple", inputs, outputs=outputs or None)
        assert (error.status(), error.message()) == (code, message)
    assert client.is_server_live()
    assert client.infer("simple", shm_inputs(protocol, "in")).as_numpy("OUTPUT0") is not None


def test_unregister_while_in_flight_waits_for_the_request(
    client: Any, protocol: str, regions: Any, server: ServerProcess
) -> None:
    handle, key = regions(64)
    # A region name and a sleep of this run's own, so that neither a region another case
    # left registered nor an earlier run's log line can stand in for this run's.
    tag = uuid.uuid4()
    region = f"io_{tag.hex[:12]}"
    seconds = np.array([0.5 + (tag.int % 4096) / 16384], dtype=np.float32)
    shared_memory.set_shared_memory_region(handle, [seconds])
    client.register_system_shared_memory(region, key, 64)
    mod = module_of(protocol)
    tensor = mod.InferInput("SECONDS", [1], "FP32")
    tensor.set_shared_memory(region, 4)
    outputs = [shm_output(protocol, "SLEPT", region, 4, 32)]

    def run() -> None:
        # A client of its own, made in its thread: an HTTP client's one connection stays
        # busy while its request is in flight, and the unregister must not queue behind it.
        runner = make_client(protocol, server)
        try:
            runner.infer("py_sleep", [tensor], outputs=outputs)
        finally:
            runner.close()

    with ThreadPoolExecutor(1) as pool:
        pending = pool.submit(run)
        server.wait_for_log(rf"py_sleep: sleeping {re.escape(str(float(seconds[0])))} s")
        client.unregister_system_shared_memory(region)
        assert region not in [r["name"] for r in status(client, protocol)]
        # Unregistering answered at once; the request still holds the region.
        assert not pending.done()
        pending.result(timeout=30)
    np.testing.assert_array_equal(
        shared_memory.get_contents_as_numpy(handle, np.float32, [1], offset=32), seconds
    )
