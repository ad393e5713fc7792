"""The PyTorch backend: TorchScript models made by the tests, served over HTTP and gRPC.

Where torch is installed the models run for real; where it is not, the same models must be
UNAVAILABLE with the reason while the rest of the server serves. The missing-torch path is
also tested with torch installed, by hiding it from the server process.
"""

from __future__ import annotations

import os
import warnings
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import tritonclient.grpc as grpcclient
import tritonclient.http as httpclient
from tritonclient.utils import InferenceServerException

from tests.harness import ServerProcess, run_server
from tests.models import (
    bf16_client_array,
    model_config,
    write_config,
    write_onnx_add_sub,
    write_python_probe,
)


def _torch_importable() -> bool:
    try:
        import torch  # noqa: F401
    except ImportError:
        return False
    return True


HAVE_TORCH = _torch_importable()
PT_MODELS = ("pt_add_sub", "pt_indexed", "pt_dict", "pt_kept_output", "pt_in_place", "pt_bf16")


def _save_models(repo: Path) -> None:
    """TorchScript files for the three models (needs torch)."""
    import torch

    class AddSub(torch.nn.Module):
        def forward(
            self, INPUT0: torch.Tensor, INPUT1: torch.Tensor
        ) -> tuple[torch.Tensor, torch.Tensor]:  # noqa: N803
            return INPUT0 + INPUT1, INPUT0 - INPUT1

    class Difference(torch.nn.Module):
        def forward(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
            return (x - y).to(torch.int64)

    class Scores(torch.nn.Module):
        def forward(self, logits: torch.Tensor) -> dict[str, torch.Tensor]:
            return {
                "argmax": torch.argmax(logits, dim=1).to(torch.int32),
                "probs": torch.softmax(logits, dim=1),
            }

    class KeptOutput(torch.nn.Module):
        # Answers from one buffer it refills at every call.
        def __init__(self) -> None:
            super().__init__()
            self.register_buffer("out", torch.zeros(1024))

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            self.out.copy_(x)
            return self.out

    class InPlace(torch.nn.Module):
        # Changes its input in place and answers with it.
        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return x.add_(1)

    class HalfPrecision(torch.nn.Module):
        # BF16 in; BF16 out, FP32 out, and an FP32 result the config declares BF16.
        def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
            return x * 2, x.float() * 2, x.float() / 2

    for name, module in (
        ("pt_bf16", HalfPrecision()),
        ("pt_in_place", InPlace()),
        ("pt_add_sub", AddSub()),
        ("pt_indexed", Difference()),
        ("pt_dict", Scores()),
        ("pt_kept_output", KeptOutput()),
    ):
        (repo / name / "1").mkdir(parents=True, exist_ok=True)
        with warnings.catch_warnings():
            # TorchScript is what Triton's PyTorch backend serves, deprecated or not.
            warnings.simplefilter("ignore", DeprecationWarning)
            scripted = torch.jit.script(module)
        scripted.save(str(repo / name / "1" / "model.pt"))


def _write_configs(repo: Path) -> None:
    write_config(
        repo,
        "pt_add_sub",
        model_config(
            "pt_add_sub",
            platform="pytorch_libtorch",
            inputs=[("INPUT0", "FP32", [4]), ("INPUT1", "FP32", [4])],
            outputs=[("OUTPUT__0", "FP32", [4]), ("OUTPUT__1", "FP32", [4])],
        ),
    )
    # Listed in the opposite order of forward(x, y): the indices decide.
    write_config(
        repo,
        "pt_indexed",
        model_config(
            "pt_indexed",
            backend="pytorch",
            max_batch_size=0,
            inputs=[("INPUT__1", "INT32", [-1]), ("INPUT__0", "INT32", [-1])],
            outputs=[("OUTPUT__0", "INT64", [-1])],
        ),
    )
    write_config(
        repo,
        "pt_dict",
        model_config(
            "pt_dict",
            platform="pytorch_libtorch",
            inputs=[("logits", "FP32", [3])],
            outputs=[("probs", "FP32", [3]), ("argmax", "INT32", [1])],
            dynamic_batching=False,
        ),
    )
    write_config(
        repo,
        "pt_bf16",
        model_config(
            "pt_bf16",
            platform="pytorch_libtorch",
            inputs=[("INPUT__0", "BF16", [4])],
            outputs=[
                ("OUTPUT__0", "BF16", [4]),
                ("OUTPUT__1", "FP32", [4]),
                ("OUTPUT__2", "BF16", [4]),
            ],
        ),
    )
    # One tensor in and one out, no batching.
    for name, datatype, dims in (("pt_in_place", "UINT8", [1]), ("pt_kept_output", "FP32", [1024])):
        write_config(
            repo,
            name,
            model_config(
                name,
                platform="pytorch_libtorch",
                max_batch_size=0,
                inputs=[("INPUT__0", datatype, dims)],
                outputs=[("OUTPUT__0", datatype, dims)],
            ),
        )


def _repo(base: Path, with_files: bool) -> Path:
    repo = base / "repo"
    repo.mkdir()
    _write_configs(repo)
    if with_files:
        _save_models(repo)
    else:
        for name in PT_MODELS:
            (repo / name / "1").mkdir(parents=True)
            (repo / name / "1" / "model.pt").write_bytes(b"not loadable without torch")
    write_onnx_add_sub(repo, "onnx_add_sub", "INT32", (16,), max_batch_size=8)
    return repo


def _http_input(name: str, array: np.ndarray, datatype: str) -> httpclient.InferInput:
    tensor = httpclient.InferInput(name, list(array.shape), datatype)
    tensor.set_data_from_numpy(array)
    return tensor


def _assert_unavailable_but_others_serve(srv: ServerProcess) -> None:
    with httpclient.InferenceServerClient(srv.http_url) as client:
        index = {row["name"]: row for row in client.get_model_repository_index()}
        for name in PT_MODELS:
            assert index[name]["state"] == "UNAVAILABLE"
            assert "torch" in index[name]["reason"], index[name]
            assert "pip install" in index[name]["reason"]
            assert not client.is_model_ready(name)
        a = np.arange(16, dtype=np.int32).reshape(1, 16)
        result = client.infer(
            "onnx_add_sub", [_http_input("INPUT0", a, "INT32"), _http_input("INPUT1", a, "INT32")]
        )
        np.testing.assert_array_equal(result.as_numpy("OUTPUT0"), 2 * a)
        with pytest.raises(InferenceServerException) as caught:
            client.infer("pt_dict", [_http_input("logits", np.zeros((1, 3), np.float32), "FP32")])
        assert "Request for unknown model: 'pt_dict'" in caught.value.message()


def test_without_torch_models_are_unavailable_and_the_rest_serves(tmp_path: Path) -> None:
    # A ``torch`` package that refuses to import stands in for an environment without it.
    shadow = tmp_path / "no_torch" / "torch"
    shadow.mkdir(parents=True)
    (shadow / "__init__.py").write_text("raise ImportError(\"No module named 'torch'\")\n")
    repo = _repo(tmp_path, with_files=False)
    with run_server(
        ["--model-repository", str(repo), "--exit-on-error=false"],
        ready_path="/v2/health/live",
        services=("http",),
        env={"PYTHONPATH": str(shadow.parent)},
    ) as srv:
        _assert_unavailable_but_others_serve(srv)


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    repo = _repo(tmp_path_factory.mktemp("pytorch"), with_files=HAVE_TORCH)
    with run_server(
        ["--model-repository", str(repo), "--exit-on-error=false"],
        ready_path="/v2/health/live",
        services=("http", "grpc"),
    ) as srv:
        yield srv


if HAVE_TORCH:

    def test_models_are_ready(server: ServerProcess) -> None:
        with httpclient.InferenceServerClient(server.http_url) as client:
            assert client.is_server_ready()
            metadata = client.get_model_metadata("pt_add_sub")
            assert metadata["platform"] == "pytorch_libtorch"
            assert client.get_model_config("pt_indexed")["platform"] == "pytorch_libtorch"

    def test_add_sub_by_argument_names_over_http(server: ServerProcess) -> None:
        rng = np.random.default_rng(1)
        a = rng.standard_normal((3, 4)).astype(np.float32)
        b = rng.standard_normal((3, 4)).astype(np.float32)
        with httpclient.InferenceServerClient(server.http_url) as client:
            result = client.infer(
                "pt_add_sub", [_http_input("INPUT0", a, "FP32"), _http_input("INPUT1", b, "FP32")]
            )
        np.testing.assert_allclose(result.as_numpy("OUTPUT__0"), a + b, rtol=1e-6)
        np.testing.assert_allclose(result.as_numpy("OUTPUT__1"), a - b, rtol=1e-6)

    def test_concurrent_requests_are_batched_and_split(server: ServerProcess) -> None:
        rng = np.random.default_rng(2)
        with httpclient.InferenceServerClient(server.http_url, concurrency=6) as client:
            pending: list[tuple[np.ndarray, np.ndarray, Any]] = []
            for rows in (1, 2, 1, 3, 1, 2):
                a = rng.standard_normal((rows, 4)).astype(np.float32)
                b = rng.standard_normal((rows, 4)).astype(np.float32)
                inputs = [_http_input("INPUT0", a, "FP32"), _http_input("INPUT1", b, "FP32")]
                pending.append((a, b, client.async_infer("pt_add_sub", inputs)))
            for a, b, handle in pending:
                result = handle.get_result()
                np.testing.assert_allclose(result.as_numpy("OUTPUT__0"), a + b, rtol=1e-6)
                np.testing.assert_allclose(result.as_numpy("OUTPUT__1"), a - b, rtol=1e-6)

    def test_index_convention_over_grpc(server: ServerProcess) -> None:
        x = np.array([10, 20, 30], dtype=np.int32)
        y = np.array([1, 2, 3], dtype=np.int32)
        with grpcclient.InferenceServerClient(server.grpc_url) as client:
            inputs = []
            for name, array in (("INPUT__0", x), ("INPUT__1", y)):
                tensor = grpcclient.InferInput(name, [3], "INT32")
                tensor.set_data_from_numpy(array)
                inputs.append(tensor)
            result = client.infer("pt_indexed", inputs)
        assert result.as_numpy("OUTPUT__0").dtype == np.int64
        assert result.as_numpy("OUTPUT__0").tolist() == (x - y).tolist()

    def test_dict_outputs_by_name(server: ServerProcess) -> None:
        logits = np.array([[0.1, 2.0, -1.0], [3.0, 0.0, 0.5]], dtype=np.float32)
        with httpclient.InferenceServerClient(server.http_url) as client:
            result = client.infer(
                "pt_dict",
                [_http_input("logits", logits, "FP32")],
                outputs=[httpclient.InferRequestedOutput("argmax")],
            )
        assert result.as_numpy("argmax").tolist() == [1, 0]
        assert result.as_numpy("probs") is None

    def test_model_error_is_internal(server: ServerProcess) -> None:
        # INT32 inputs of different lengths: forward() fails inside TorchScript.
        with httpclient.InferenceServerClient(server.http_url) as client:
            with pytest.raises(InferenceServerException) as caught:
                client.infer(
                    "pt_indexed",
                    [
                        _http_input("INPUT__0", np.zeros(3, np.int32), "INT32"),
                        _http_input("INPUT__1", np.zeros(2, np.int32), "INT32"),
                    ],
                )
        assert caught.value.status() == "500"
        assert "PyTorch execute failure for model 'pt_indexed'" in caught.value.message()

    def test_module_state_as_output_answers_each_request(server: ServerProcess) -> None:
        # forward() returns a buffer it refills at every call; the next call may run while
        # the previous answer is encoded, so that answer must be a copy.
        with httpclient.InferenceServerClient(server.http_url, concurrency=8) as client:
            pending = []
            for k in range(200):
                values = np.full(1024, k, dtype=np.float32)
                inputs = [_http_input("INPUT__0", values, "FP32")]
                pending.append((k, client.async_infer("pt_kept_output", inputs)))
            wrong = [
                k
                for k, handle in pending
                if not (handle.get_result().as_numpy("OUTPUT__0") == k).all()
            ]
        assert wrong == []

    def test_module_changing_its_input_in_place_gets_its_own_copy(server: ServerProcess) -> None:
        # A one-byte raw input over gRPC is one of the interpreter's shared one-byte bytes
        # objects: written in place, it would change every later b"\x05" in the process.
        with grpcclient.InferenceServerClient(server.grpc_url) as client:
            for _ in range(3):
                tensor = grpcclient.InferInput("INPUT__0", [1], "UINT8")
                tensor.set_data_from_numpy(np.array([5], dtype=np.uint8))
                result = client.infer("pt_in_place", [tensor])
                assert result.as_numpy("OUTPUT__0").tolist() == [6]

    def test_bf16_in_and_out(server: ServerProcess) -> None:
        given = np.array([[1.5, -3.0, 0.0078125, 1000.0], [2.0, 0.5, -0.25, 96.0]], np.float32)
        for module, url in ((httpclient, server.http_url), (grpcclient, server.grpc_url)):
            client = module.InferenceServerClient(url)
            tensor = module.InferInput("INPUT__0", [2, 4], "BF16")
            tensor.set_data_from_numpy(bf16_client_array(given))
            result = client.infer("pt_bf16", [tensor])
            # Every value here is exact in BF16, so the answers are too.
            assert result.as_numpy("OUTPUT__0").astype(np.float32).tolist() == (given * 2).tolist()
            assert result.as_numpy("OUTPUT__1").dtype == np.float32
            assert result.as_numpy("OUTPUT__1").tolist() == (given * 2).tolist()
            assert result.as_numpy("OUTPUT__2").astype(np.float32).tolist() == (given / 2).tolist()
            client.close()

    _TORCH_THREADS = (
        "import numpy as np, torch\n"
        "import triton_python_backend_utils as pb_utils\n"
        "class TritonPythonModel:\n"
        "    def execute(self, requests):\n"
        "        counts = np.array([torch.get_num_threads() * 100 + "
        "torch.get_num_interop_threads()], dtype=np.int64)\n"
        "        return [pb_utils.InferenceResponse([pb_utils.Tensor('OUT', counts)]) "
        "for _ in requests]\n"
    )

    def _torch_threads(tmp_path: Path, parameters: str, env: dict[str, str]) -> int:
        """torch's intra-op count * 100 + its inter-op count in a server whose pt_add_sub
        has ``parameters``, read back by an in-process Python model."""
        repo = _repo(tmp_path, with_files=True)
        config = repo / "pt_add_sub" / "config.pbtxt"
        config.write_text(config.read_text() + parameters)
        write_python_probe(repo, "torch_threads", _TORCH_THREADS, output="INT64")
        with run_server(["--model-repository", str(repo)], services=("http",), env=env) as srv:
            with httpclient.InferenceServerClient(srv.http_url) as client:
                a = np.ones((1, 4), np.float32)
                result = client.infer(
                    "pt_add_sub",
                    [_http_input("INPUT0", a, "FP32"), _http_input("INPUT1", a, "FP32")],
                )
                np.testing.assert_array_equal(result.as_numpy("OUTPUT__0"), 2 * a)
                tensor = _http_input("IN", np.zeros(1, np.int32), "INT32")
                return int(client.infer("torch_threads", [tensor]).as_numpy("OUT")[0])

    def test_thread_count_parameters_set_torchs_threads(tmp_path: Path) -> None:
        # Triton's PyTorch backend parameters; torch's counts are the process's.
        parameters = (
            'parameters { key: "INTRA_OP_THREAD_COUNT" value { string_value: "5" } }\n'
            'parameters { key: "INTER_OP_THREAD_COUNT" value { string_value: "7" } }\n'
        )
        assert _torch_threads(tmp_path, parameters, {}) == 507

    @pytest.mark.skipif(len(os.sched_getaffinity(0)) < 2, reason="needs two CPUs to limit")
    def test_a_cpu_limit_below_the_machine_caps_torchs_threads(tmp_path: Path) -> None:
        # joblib's LOKY_MAX_CPU_COUNT limits the count as a pod's CPU quota does; torch
        # itself would take every CPU of the process's set.
        assert _torch_threads(tmp_path, "", {"LOKY_MAX_CPU_COUNT": "1"}) // 100 == 1

else:

    def test_models_need_torch(server: ServerProcess) -> None:
        _assert_unavailable_but_others_serve(server)
