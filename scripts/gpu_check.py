"""Check device discovery, instance pinning and GPU metrics on a machine with a GPU.

    python scripts/gpu_check.py [--require-gpu]

For every device the server discovers it prints what it found (GPU or MIG slice), loads an
ONNX model instance pinned to that device through the server's own loading path and checks
that onnxruntime's CUDA provider runs it with that ``device_id`` and that NVML sees this
process on that device; cross-checks the device list with PyTorch where installed; and
scrapes the metrics app for the ``nv_gpu_*`` families of each device; and, on each device,
round-trips a request through CUDA shared memory over HTTP and gRPC against a server process
(inputs and outputs in device memory the check exports with CUDA IPC). A server process then
serves TorchScript models placed with KIND_GPU, KIND_AUTO, KIND_CPU and an invalid gpu id,
and ONNX models placed with KIND_GPU and KIND_AUTO, driven with tritonclient: where each ran,
batched concurrent requests, statistics, NVML's process list, and the ``gpu_uuid`` labels and
``nv_gpu_*`` families of its metrics endpoint, with Python-backend models on KIND_GPU and
KIND_CPU that hand their outputs over through DLPack from device memory. A model then keeps
the first GPU busy while the metrics are scraped: utilisation must rise and the energy counter
must grow by what the reported power accounts for. Last, the bundled repository is served as
the README serves it. It prints one JSON report and exits non-zero when a check fails (or, with
--require-gpu, when no GPU is found).
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import json
import os
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from server.devices import DeviceLayer, GpuDevice  # noqa: E402


def _model_dir(root: Path, gpu: int) -> Path:
    import onnx
    from onnx import TensorProto, helper

    directory = root / f"pinned_{gpu}"
    (directory / "1").mkdir(parents=True)
    x = helper.make_tensor_value_info("X", TensorProto.FLOAT, ["N", 1024])
    y = helper.make_tensor_value_info("Y", TensorProto.FLOAT, ["N", 1024])
    graph = helper.make_graph([helper.make_node("Add", ["X", "X"], ["Y"])], "double", [x], [y])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 14)])
    model.ir_version = 8
    onnx.save(model, str(directory / "1" / "model.onnx"))
    (directory / "config.pbtxt").write_text(
        f'name: "pinned_{gpu}"\nbackend: "onnxruntime"\nmax_batch_size: 8\n'
        'input [ { name: "X" data_type: TYPE_FP32 dims: [ 1024 ] } ]\n'
        'output [ { name: "Y" data_type: TYPE_FP32 dims: [ 1024 ] } ]\n'
        f"instance_group [ {{ kind: KIND_GPU gpus: [ {gpu} ] count: 1 }} ]\n"
    )
    return directory


def check_pinning(device: GpuDevice, gpus: list[GpuDevice], workdir: Path) -> dict[str, Any]:
    """Load through the manager's own steps and run one batch on the device."""
    import numpy as np

    from server.backends.registry import get_backend
    from server.repository import config as cfg
    from server.repository.manager import instance_specs
    from server.repository.view import build_view

    model_dir = _model_dir(workdir, device.index)
    config = cfg.load_model_config(model_dir, model_dir.name, gpu_count=len(gpus))
    spec = instance_specs(config, gpus)[0]
    result: dict[str, Any] = {
        "spec": [spec.kind, spec.device_id, spec.device_uuid, spec.device_name]
    }
    instance = get_backend("onnxruntime").load(
        config, build_view(config, "1", {}), model_dir / "1", spec
    )
    session = instance._session  # type: ignore[attr-defined]
    providers = session.get_providers()
    options = session.get_provider_options().get("CUDAExecutionProvider", {})
    out = session.run(None, {"X": np.ones((8, 1024), dtype=np.float32)})[0]
    result.update(
        providers=providers,
        cuda_device_id=options.get("device_id"),
        output_ok=bool(np.allclose(out, 2.0)),
        nvml_sees_process=_pid_on(device, os.getpid()),
    )
    result["ok"] = (
        providers[0] == "CUDAExecutionProvider"
        and str(options.get("device_id")) == str(device.index)
        and result["output_ok"]
        and result["nvml_sees_process"] is not False
    )
    return result


def check_torch(gpus: list[GpuDevice]) -> dict[str, Any]:
    try:
        import torch
    except ImportError:
        return {"skipped": "torch is not installed"}
    if not torch.cuda.is_available():
        return {"ok": not gpus, "cuda_available": False}
    seen = []
    for index in range(torch.cuda.device_count()):
        props = torch.cuda.get_device_properties(index)
        uuid = str(getattr(props, "uuid", ""))
        seen.append({"index": index, "name": props.name, "uuid": uuid})
    ours = [_bare(g.uuid) for g in gpus]
    theirs = [_bare(str(s["uuid"])) for s in seen]
    # PyTorch places tensors by the same CUDA ordinals the server pins instances to.
    tensor_ok = True
    for gpu in gpus:
        tensor = torch.ones(4, device=f"cuda:{gpu.index}")
        tensor_ok = tensor_ok and tensor.device.index == gpu.index
    return {"ok": ours == theirs and tensor_ok, "devices": seen}


def _bare(uuid: str) -> str:
    for prefix in ("GPU-", "MIG-"):
        uuid = uuid.removeprefix(prefix)
    return uuid.lower()


def check_metrics(layer: DeviceLayer, gpus: list[GpuDevice]) -> dict[str, Any]:
    from prometheus_client.parser import text_string_to_metric_families

    from server.metrics.endpoint import create_metrics_app

    class _Manager:
        listeners: list[Any] = []
        devices = layer

        def ready_versions(self) -> list[Any]:
            return []

    class _Core:
        manager = _Manager()

    class _Settings:
        metrics_config: list[str] = []
        allow_gpu_metrics = True
        allow_cpu_metrics = True
        metrics_interval_ms = 200

    app = create_metrics_app(_Core(), _Settings())
    try:
        time.sleep(0.5)  # let the poller take a second reading for utilisation and energy
        text = asyncio.run(_scrape(app))
    finally:
        app.close()
    families = {f.name: f for f in text_string_to_metric_families(text)}
    per_device = {
        name: sorted(s.labels.get("gpu_uuid", "") for s in families[name].samples)
        for name in families
        if name.startswith(("nv_gpu_", "nv_energy"))
    }
    expected = sorted(g.uuid for g in gpus)
    memory_ok = per_device.get("nv_gpu_memory_total_bytes") == expected
    return {"ok": memory_ok or not gpus, "families": per_device}


async def _scrape(app: Any) -> str:
    import httpx

    transport = httpx.ASGITransport(app=app)
    async with httpx.AsyncClient(transport=transport, base_url="http://metrics") as client:
        response = await client.get("/metrics")
    return response.text


class _DeviceBuffer:
    """Device memory exported for the server, made with tritonclient's CUDA shared-memory
    helpers where they import and with cuda-python's runtime directly otherwise (the helpers
    before tritonclient 2.73 need the ``cuda.cudart`` module that cuda-python 13 no longer has)."""

    helper = ""

    def __init__(self, name: str, size: int, device: int) -> None:
        self.size = size
        try:
            import tritonclient.utils.cuda_shared_memory as cudashm

            self._shm: Any = cudashm
            self._region = cudashm.create_shared_memory_region(name, size, device)
            self.raw_handle = cudashm.get_raw_handle(self._region)
            _DeviceBuffer.helper = "tritonclient.utils.cuda_shared_memory"
            return
        except Exception as exc:  # ImportError or RuntimeError from the helper's import
            _DeviceBuffer.helper = f"cuda-python runtime ({type(exc).__name__}: {exc})"
        import ctypes

        from server.cuda_ipc import _import_runtime

        self._shm = None
        rt = self._rt = _import_runtime()
        rt.cudaSetDevice(device)
        err, self._pointer = rt.cudaMalloc(size)
        assert err == rt.cudaError_t.cudaSuccess, err
        err, handle = rt.cudaIpcGetMemHandle(self._pointer)
        assert err == rt.cudaError_t.cudaSuccess, err
        self.raw_handle = base64.b64encode(ctypes.string_at(handle.getPtr(), 64))

    def write(self, arrays: list[Any]) -> None:
        import numpy as np

        if self._shm is not None:
            self._shm.set_shared_memory_region(self._region, arrays)
            return
        data = np.concatenate([a.reshape(-1).view(np.uint8) for a in arrays])
        kind = self._rt.cudaMemcpyKind.cudaMemcpyHostToDevice
        self._rt.cudaMemcpy(int(self._pointer), data.ctypes.data, data.size, kind)

    def read(self, dtype: Any, count: int, offset: int) -> Any:
        import numpy as np

        if self._shm is not None:
            # The helper reads from the start of the region only.
            skip = offset // np.dtype(dtype).itemsize
            whole = self._shm.get_contents_as_numpy(self._region, dtype, [skip + count])
            return whole[skip:]
        host = np.empty(count, dtype=dtype)
        kind = self._rt.cudaMemcpyKind.cudaMemcpyDeviceToHost
        self._rt.cudaMemcpy(host.ctypes.data, int(self._pointer) + offset, host.nbytes, kind)
        return host

    def close(self) -> None:
        if self._shm is not None:
            self._shm.destroy_shared_memory_region(self._region)
        else:
            self._rt.cudaFree(self._pointer)


def check_cuda_shm(gpus: list[GpuDevice], workdir: Path) -> dict[str, Any]:
    """Inputs read from and outputs written to device memory by a server process."""
    import numpy as np
    import tritonclient.grpc as grpcclient
    import tritonclient.http as httpclient

    from tests.harness import run_server
    from tests.models import copy_bundled_model

    repo = workdir / "cuda_shm_repo"
    repo.mkdir()
    copy_bundled_model(repo, "simple")
    a = np.arange(16, dtype=np.int32)
    b = np.full(16, 3, dtype=np.int32)
    results: dict[str, Any] = {}
    args = ["--model-repository", str(repo), "--allow-client-shm=true"]
    with run_server(args) as srv:
        for gpu in gpus:
            for protocol, mod in (("http", httpclient), ("grpc", grpcclient)):
                key = f"{protocol}/{gpu.index}"
                url = srv.http_url if protocol == "http" else srv.grpc_url
                client = mod.InferenceServerClient(url)
                buffers: list[_DeviceBuffer] = []
                try:
                    inputs = _DeviceBuffer(f"in_{protocol}", 128, gpu.index)
                    buffers.append(inputs)
                    outputs = _DeviceBuffer(f"out_{protocol}", 128, gpu.index)
                    buffers.append(outputs)
                    inputs.write([a, b])
                    client.register_cuda_shared_memory("in", inputs.raw_handle, gpu.index, 128)
                    client.register_cuda_shared_memory("out", outputs.raw_handle, gpu.index, 128)
                    status = client.get_cuda_shared_memory_status()
                    tensors = [
                        mod.InferInput("INPUT0", [1, 16], "INT32"),
                        mod.InferInput("INPUT1", [1, 16], "INT32"),
                    ]
                    tensors[0].set_shared_memory("in", 64, 0)
                    tensors[1].set_shared_memory("in", 64, 64)
                    wanted = [
                        mod.InferRequestedOutput("OUTPUT0"),
                        mod.InferRequestedOutput("OUTPUT1"),
                    ]
                    wanted[0].set_shared_memory("out", 64, 0)
                    wanted[1].set_shared_memory("out", 64, 64)
                    client.infer("simple", tensors, outputs=wanted)
                    total = outputs.read(np.int32, 16, 0)
                    diff = outputs.read(np.int32, 16, 64)
                    client.unregister_cuda_shared_memory()
                    after = client.get_cuda_shared_memory_status()
                    listed = len(status) if protocol == "http" else len(status.regions)
                    left = len(after) if protocol == "http" else len(after.regions)
                    results[key] = {
                        "ok": bool(np.array_equal(total, a + b) and np.array_equal(diff, a - b))
                        and listed == 2
                        and left == 0,
                        "status_regions": listed,
                    }
                except Exception as exc:
                    results[key] = {"ok": False, "error": f"{type(exc).__name__}: {exc}"}
                finally:
                    for buffer in buffers:
                        buffer.close()
                    client.close()
    return {
        "ok": all(r["ok"] for r in results.values()),
        "client_helper": _DeviceBuffer.helper,
        "runs": results,
    }


def _placed_module(path: Path) -> None:
    """TorchScript: (x * 2 + 1, the CUDA ordinal the input arrived on, -1 on the CPU, and
    x * 2 + 1 again in BF16)."""
    import torch

    class Placed(torch.nn.Module):
        def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
            where = torch.zeros(x.shape[0], 1, dtype=torch.int32, device=x.device)
            y = x * 2.0 + 1.0
            return y, where + x.get_device(), y.to(torch.bfloat16)

    path.parent.mkdir(parents=True, exist_ok=True)
    torch.jit.script(Placed()).save(str(path))


# A Python-backend model as Triton's GPU examples write them: torch on the instance's device,
# inputs taken through DLPack, outputs handed back as a raw DLPack capsule, as a torch tensor
# and (where CuPy is installed) as a CuPy array, all three in device memory on a GPU instance,
# and a BF16 one.
PYTHON_GPU_MODEL = """
import numpy as np
import torch
import triton_python_backend_utils as pb_utils
from torch.utils.dlpack import from_dlpack, to_dlpack


class TritonPythonModel:
    def initialize(self, args):
        self.kind = args["model_instance_kind"]
        ordinal = int(args["model_instance_device_id"])
        self.device = torch.device("cuda", ordinal) if self.kind == "GPU" else torch.device("cpu")

    def execute(self, requests):
        responses = []
        for request in requests:
            given = pb_utils.get_input_tensor_by_name(request, "INPUT0")
            x = from_dlpack(given.to_dlpack()).to(self.device)
            y = x * 2 + 1
            third = y + 2
            if self.device.type == "cuda":
                try:
                    import cupy
                except ImportError:
                    pass
                else:
                    third = cupy.from_dlpack(third)
            where = np.array([x.get_device() if self.kind == "GPU" else -1], dtype=np.int32)
            responses.append(pb_utils.InferenceResponse([
                pb_utils.Tensor.from_dlpack("OUTPUT0", to_dlpack(y)),
                pb_utils.Tensor.from_dlpack("OUTPUT1", y + 1),
                pb_utils.Tensor.from_dlpack("OUTPUT2", third),
                pb_utils.Tensor.from_dlpack("HALVED", to_dlpack((y / 2).to(torch.bfloat16))),
                pb_utils.Tensor("WHERE", where),
                pb_utils.Tensor("KIND", np.array([self.kind.encode()], dtype=np.object_)),
            ]))
        return responses
"""


def _server_repo(root: Path, gpus: list[GpuDevice]) -> Path:
    from tests.models import model_config, write_config, write_onnx_add_sub, write_python_model

    repo = root / "server_repo"
    every = ", ".join(str(g.index) for g in gpus)
    groups = {
        "placed_gpu": f"instance_group [ {{ kind: KIND_GPU gpus: [ {every} ] count: 2 }} ]",
        "placed_auto": "",
        "placed_cpu": "instance_group [ { kind: KIND_CPU count: 1 } ]",
        "placed_bad": f"instance_group [ {{ kind: KIND_GPU gpus: [ {len(gpus)} ] }} ]",
    }
    for name, extra in groups.items():
        write_config(
            repo,
            name,
            model_config(
                name,
                platform="pytorch_libtorch",
                inputs=[("INPUT__0", "FP32", [8])],
                outputs=[
                    ("OUTPUT__0", "FP32", [8]),
                    ("OUTPUT__1", "INT32", [1]),
                    ("OUTPUT__2", "BF16", [8]),
                ],
                max_batch_size=16,
                extra=extra,
            ),
        )
        _placed_module(repo / name / "1" / "model.pt")
    for name, kind in (("python_gpu", "KIND_GPU"), ("python_cpu", "KIND_CPU")):
        config = model_config(
            name,
            backend="python",
            max_batch_size=0,
            inputs=[("INPUT0", "FP32", [8])],
            outputs=[
                *((f"OUTPUT{i}", "FP32", [8]) for i in range(3)),
                ("HALVED", "BF16", [8]),
                ("WHERE", "INT32", [1]),
                ("KIND", "BYTES", [1]),
            ],
            extra=f"instance_group [ {{ kind: {kind} }} ]",
        )
        write_python_model(repo, name, PYTHON_GPU_MODEL, config)
    write_onnx_add_sub(repo, "onnx_gpu", config_extra="instance_group [ { kind: KIND_GPU } ]")
    write_onnx_add_sub(repo, "onnx_auto")
    return repo


PYTHON_MODELS = ("python_cpu", "python_gpu")


def _metric_samples(text: str) -> list[Any]:
    from prometheus_client.parser import text_string_to_metric_families

    return [s for f in text_string_to_metric_families(text) for s in f.samples]


def check_server(gpus: list[GpuDevice], workdir: Path) -> dict[str, Any]:
    """A server process on a repository of TorchScript and ONNX models placed on the GPU,
    the CPU and KIND_AUTO, driven with tritonclient as users do."""
    import concurrent.futures
    import urllib.request

    import numpy as np
    import tritonclient.grpc as grpcclient
    import tritonclient.http as httpclient

    from server.backends.onnxruntime import OnnxRuntimeBackend
    from tests.harness import run_server

    ort_reason = OnnxRuntimeBackend().gpu_unusable_reason()
    repo = _server_repo(workdir, gpus)
    report: dict[str, Any] = {"onnxruntime_gpu_unusable": ort_reason}
    failures: list[str] = []

    def expect(ok: bool, what: str) -> None:
        if not ok:
            failures.append(what)

    every = [g.index for g in gpus]
    args = ["--model-repository", str(repo), "--exit-on-error=false"]
    with run_server(args, ready_path="/v2/health/live") as srv:
        http = httpclient.InferenceServerClient(srv.http_url)
        grpc = grpcclient.InferenceServerClient(srv.grpc_url)

        def states() -> None:
            index = {row["name"]: row for row in http.get_model_repository_index()}
            report["index"] = {n: [r.get("state"), r.get("reason", "")] for n, r in index.items()}
            ready = ("placed_gpu", "placed_auto", "placed_cpu", "onnx_auto", *PYTHON_MODELS)
            for name in ready:
                expect(index[name].get("state") == "READY", f"{name} is not READY")
            expect(index["placed_bad"].get("state") == "UNAVAILABLE", "placed_bad loaded")
            expect(
                f"invalid or unsupported gpu id {len(gpus)}"
                in index["placed_bad"].get("reason", ""),
                "placed_bad's reason",
            )
            expect(
                (index["onnx_gpu"].get("state") == "READY") == (ort_reason is None),
                "onnx_gpu's state does not follow onnxruntime's CUDA provider",
            )
            kinds = {}
            for name in ("placed_gpu", "placed_auto", "placed_cpu", "onnx_auto"):
                config = http.get_model_config(name)
                kinds[name] = [
                    (g["kind"], g.get("gpus", []), g["count"]) for g in config["instance_group"]
                ]
            report["instance_groups"] = kinds
            expect(
                kinds["placed_auto"] == [("KIND_GPU", every, 1)], "placed_auto is not on the GPUs"
            )
            onnx_kind = "KIND_GPU" if ort_reason is None else "KIND_CPU"
            expect(kinds["onnx_auto"][0][0] == onnx_kind, f"onnx_auto is not {onnx_kind}")

        def placement() -> None:
            x = np.arange(32, dtype=np.float32).reshape(4, 8)
            placed: dict[str, list[int]] = {}
            for name in ("placed_gpu", "placed_auto", "placed_cpu"):
                for mod, client in ((httpclient, http), (grpcclient, grpc)):
                    tensor = mod.InferInput("INPUT__0", [4, 8], "FP32")
                    tensor.set_data_from_numpy(x)
                    result = client.infer(name, [tensor])
                    for output in ("OUTPUT__0", "OUTPUT__2"):  # FP32, and BF16 (exact here)
                        expect(
                            np.array_equal(result.as_numpy(output), x * 2 + 1),
                            f"{name} {output}",
                        )
                    placed.setdefault(name, []).extend(
                        result.as_numpy("OUTPUT__1").ravel().tolist()
                    )
            report["ran_on_cuda_ordinal"] = {n: sorted(set(v)) for n, v in placed.items()}
            expect(
                set(placed["placed_gpu"]) <= set(every) and -1 not in placed["placed_gpu"], "gpu"
            )
            expect(
                set(placed["placed_auto"]) <= set(every) and -1 not in placed["placed_auto"], "auto"
            )
            expect(set(placed["placed_cpu"]) == {-1}, "placed_cpu ran on a GPU")

        def python_models() -> None:
            x = np.linspace(-1, 1, 8, dtype=np.float32)
            seen: dict[str, list[Any]] = {}
            for name in PYTHON_MODELS:
                for mod, client in ((httpclient, http), (grpcclient, grpc)):
                    tensor = mod.InferInput("INPUT0", [8], "FP32")
                    tensor.set_data_from_numpy(x)
                    result = client.infer(name, [tensor])
                    for i in range(3):
                        expect(
                            np.allclose(result.as_numpy(f"OUTPUT{i}"), x * 2 + 1 + i),
                            f"{name} OUTPUT{i}",
                        )
                    expect(
                        np.allclose(result.as_numpy("HALVED"), (x * 2 + 1) / 2, rtol=1e-2),
                        f"{name} HALVED (BF16)",
                    )
                    where = int(result.as_numpy("WHERE")[0])
                    kind = result.as_numpy("KIND")[0].decode()
                    seen.setdefault(name, []).append([kind, where])
            report["python_instances"] = seen
            expect(all(k == "GPU" and w in every for k, w in seen["python_gpu"]), "python_gpu")
            expect(all(k == "CPU" and w == -1 for k, w in seen["python_cpu"]), "python_cpu")

        def concurrency() -> None:
            def one(i: int) -> bool:
                row = np.full((1, 8), i, dtype=np.float32)
                tensor = grpcclient.InferInput("INPUT__0", [1, 8], "FP32")
                tensor.set_data_from_numpy(row)
                out = grpc.infer("placed_gpu", [tensor]).as_numpy("OUTPUT__0")
                return bool(np.array_equal(out, row * 2 + 1))

            with concurrent.futures.ThreadPoolExecutor(32) as pool:
                answers = list(pool.map(one, range(512)))
            expect(all(answers), "concurrent placed_gpu answers")
            stats = http.get_inference_statistics("placed_gpu")["model_stats"][0]
            report["placed_gpu_stats"] = {
                "inference_count": stats["inference_count"],
                "execution_count": stats["execution_count"],
            }
            expect(stats["inference_count"] == 512 + 8, "placed_gpu inference_count")

        def onnx() -> None:
            a = np.arange(16, dtype=np.int32).reshape(1, 16)
            onnx_models = ["onnx_auto"] + (["onnx_gpu"] if ort_reason is None else [])
            for name in onnx_models:
                inputs = [httpclient.InferInput(n, [1, 16], "INT32") for n in ("INPUT0", "INPUT1")]
                for tensor in inputs:
                    tensor.set_data_from_numpy(a)
                result = http.infer(name, inputs)
                expect(np.array_equal(result.as_numpy("OUTPUT0"), 2 * a), f"{name} output")

        def nvml() -> None:
            report["nvml_sees_server"] = {g.uuid: _pid_on(g, srv.proc.pid) for g in gpus}
            expect(all(v is not False for v in report["nvml_sees_server"].values()), "NVML")

        def metrics() -> None:
            with urllib.request.urlopen(srv.metrics_url, timeout=10) as response:
                samples = _metric_samples(response.read().decode())
            success = {
                s.labels["model"]: s.labels.get("gpu_uuid")
                for s in samples
                if s.name.removesuffix("_total") == "nv_inference_request_success"
            }
            report["request_success_gpu_uuid"] = success
            uuids = {g.uuid for g in gpus}
            expect(len(gpus) > 1 or success.get("placed_gpu") in uuids, "placed_gpu gpu_uuid label")
            expect(success.get("placed_cpu") is None, "placed_cpu has a gpu_uuid label")
            gpu_families: dict[str, dict[str | None, float]] = {}
            for sample in samples:
                if sample.name.startswith(("nv_gpu_", "nv_energy")):
                    gpu_families.setdefault(sample.name.removesuffix("_total"), {})[
                        sample.labels.get("gpu_uuid")
                    ] = sample.value
            report["gpu_metrics"] = gpu_families
            for family in ("nv_gpu_memory_total_bytes", "nv_gpu_memory_used_bytes"):
                expect(set(gpu_families.get(family, {})) == uuids, f"{family} per GPU")
            for gpu in gpus:
                used = gpu_families.get("nv_gpu_memory_used_bytes", {}).get(gpu.uuid, 0)
                expect(used > 0, f"no memory used on {gpu.uuid}")
                if not gpu.is_mig:
                    for family in (
                        "nv_gpu_utilization",
                        "nv_gpu_power_usage",
                        "nv_energy_consumption",
                    ):
                        expect(gpu.uuid in gpu_families.get(family, {}), f"{family} for {gpu.uuid}")

        for step in (states, placement, python_models, concurrency, onnx, nvml, metrics):
            try:
                step()
            except Exception as exc:
                failures.append(f"{step.__name__}: {type(exc).__name__}: {exc}")
        http.close()
        grpc.close()
        log = srv.log()
    report["server_log_tracebacks"] = log.count("Traceback")
    expect("Traceback" not in log, "the server logged a traceback")
    report["failures"] = failures
    report["ok"] = not failures
    return report


# Keeps its GPU busy: each request runs IN[0] products of 4096x4096 float matrices.
PYTHON_BUSY_MODEL = """
import numpy as np
import torch
import triton_python_backend_utils as pb_utils


class TritonPythonModel:
    def initialize(self, args):
        self.device = torch.device("cuda", int(args["model_instance_device_id"]))
        self.a = torch.rand(4096, 4096, device=self.device) / 4096

    def execute(self, requests):
        responses = []
        for request in requests:
            rounds = int(pb_utils.get_input_tensor_by_name(request, "IN").as_numpy()[0])
            b = self.a
            for _ in range(rounds):
                b = torch.tanh(b @ self.a + 1)
            torch.cuda.synchronize(self.device)
            value = np.array([float(b.mean())], dtype=np.float32)
            responses.append(pb_utils.InferenceResponse([pb_utils.Tensor("OUT", value)]))
        return responses
"""


def check_telemetry(gpus: list[GpuDevice], workdir: Path) -> dict[str, Any]:
    """The ``nv_gpu_*`` and energy figures of a server whose model keeps the first GPU busy
    for a few seconds, scraped as Prometheus would: utilisation must rise, energy must grow
    by about what the reported power says over the same time."""
    import concurrent.futures
    import urllib.request

    import numpy as np
    import tritonclient.http as httpclient

    from tests.harness import run_server
    from tests.models import write_python_probe

    gpu = gpus[0]
    repo = workdir / "telemetry_repo"
    write_python_probe(repo, "busy", PYTHON_BUSY_MODEL, output="FP32")
    (repo / "busy" / "config.pbtxt").open("a").write(
        f"instance_group [ {{ kind: KIND_GPU gpus: [ {gpu.index} ] }} ]\n"
    )
    args = ["--model-repository", str(repo), "--metrics-interval-ms", "100"]
    scrapes: list[dict[str, float]] = []

    def scrape() -> None:
        with urllib.request.urlopen(srv.metrics_url, timeout=10) as response:
            samples = _metric_samples(response.read().decode())
        row = {"t": time.monotonic()}
        for sample in samples:
            if sample.labels.get("gpu_uuid") == gpu.uuid and sample.name.startswith(
                ("nv_gpu_", "nv_energy")
            ):
                row[sample.name.removesuffix("_total")] = sample.value
        scrapes.append(row)

    rounds = np.array([400], dtype=np.int32)

    def load(until: float) -> int:
        # tritonclient's HTTP client belongs to the thread that made it.
        client = httpclient.InferenceServerClient(srv.http_url)
        tensor = httpclient.InferInput("IN", [1], "INT32")
        tensor.set_data_from_numpy(rounds)
        answered = 0
        try:
            while answered == 0 or time.monotonic() < until:
                client.infer("busy", [tensor])
                answered += 1
        finally:
            client.close()
        return answered

    with run_server(args) as srv:
        load(0.0)  # one request: the kernels are ready before the first reading
        time.sleep(0.3)
        scrape()
        with concurrent.futures.ThreadPoolExecutor(1) as pool:
            running = pool.submit(load, time.monotonic() + 4.0)
            while not running.done():
                time.sleep(0.5)
                scrape()
            answers = running.result()
    first, last = scrapes[0], scrapes[-1]
    seconds = last["t"] - first["t"]
    energy = last.get("nv_energy_consumption", 0.0) - first.get("nv_energy_consumption", 0.0)
    powers = [row.get("nv_gpu_power_usage", 0.0) for row in scrapes[1:]]
    mean_power = sum(powers) / len(powers) if powers else 0.0
    peak_util = max(row.get("nv_gpu_utilization", 0.0) for row in scrapes[1:])
    report = {
        "requests": answers,
        "seconds": round(seconds, 2),
        "energy_joules": round(energy, 1),
        "mean_power_watts": round(mean_power, 1),
        "energy_over_power_time": round(energy / (mean_power * seconds), 2) if mean_power else None,
        "peak_utilization": peak_util,
        "memory_used_bytes": [row.get("nv_gpu_memory_used_bytes") for row in scrapes],
        "scrapes": scrapes,
    }
    report["ok"] = bool(
        answers > 0
        and peak_util > 0.5
        and mean_power > 0
        and 0.5 <= energy / (mean_power * seconds) <= 2.0
    )
    return report


def check_bundled(gpus: list[GpuDevice]) -> dict[str, Any]:
    """The bundled repository, served as the README's first command serves it."""
    import numpy as np
    import tritonclient.http as httpclient

    from tests.harness import run_server

    report: dict[str, Any] = {}
    with run_server(["--model-repository", str(ROOT / "model_repository")]) as srv:
        client = httpclient.InferenceServerClient(srv.http_url)
        index = client.get_model_repository_index()
        report["states"] = {row["name"]: row.get("state") for row in index}
        report["kinds"] = {
            row["name"]: sorted(
                {g["kind"] for g in client.get_model_config(row["name"])["instance_group"]}
            )
            for row in index
        }
        a = np.arange(16, dtype=np.int32).reshape(1, 16)
        inputs = [httpclient.InferInput(n, [1, 16], "INT32") for n in ("INPUT0", "INPUT1")]
        for tensor in inputs:
            tensor.set_data_from_numpy(a)
        out = client.infer("simple", inputs).as_numpy("OUTPUT0")
        report["simple_ok"] = bool(np.array_equal(out, 2 * a))
        client.close()
        report["tracebacks"] = srv.log().count("Traceback")
    report["ok"] = (
        all(state == "READY" for state in report["states"].values())
        and report["simple_ok"]
        and report["tracebacks"] == 0
    )
    return report


def _pid_on(device: GpuDevice, pid: int) -> bool | None:
    try:
        import pynvml

        pynvml.nvmlInit()
        handle = pynvml.nvmlDeviceGetHandleByUUID(device.uuid)
        processes = pynvml.nvmlDeviceGetComputeRunningProcesses(handle)
    except Exception:
        return None
    if not processes:
        return None
    return any(p.pid == pid for p in processes)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--require-gpu", action="store_true", help="fail when no GPU is found")
    args = parser.parse_args()
    layer = DeviceLayer()
    gpus = layer.gpus()
    report: dict[str, Any] = {
        "devices": [
            {
                "index": g.index,
                "uuid": g.uuid,
                "name": g.name,
                "mig": g.is_mig,
                "profile": g.profile,
                "parent": g.parent_uuid,
                "memory_total": g.memory_total,
            }
            for g in gpus
        ],
        "telemetry": [s.__repr__() for s in layer.sample(gpus)],
    }
    ok = bool(gpus) or not args.require_gpu
    with tempfile.TemporaryDirectory() as workdir:
        report["pinning"] = {}
        for gpu in gpus:
            try:
                result = check_pinning(gpu, gpus, Path(workdir))
            except Exception as exc:
                result = {"ok": False, "error": f"{type(exc).__name__}: {exc}"}
            report["pinning"][gpu.uuid] = result
            ok = ok and result["ok"]
        if gpus:
            try:
                report["cuda_shm"] = check_cuda_shm(gpus, Path(workdir))
            except Exception as exc:
                report["cuda_shm"] = {"ok": False, "error": f"{type(exc).__name__}: {exc}"}
            ok = ok and report["cuda_shm"]["ok"]
        for key, check in (
            ("server", lambda: check_server(gpus, Path(workdir))),
            ("telemetry", lambda: check_telemetry(gpus, Path(workdir))),
            ("bundled", lambda: check_bundled(gpus)),
        ):
            if key in ("server", "telemetry") and not gpus:
                continue
            try:
                report[key] = check()
            except Exception as exc:
                report[key] = {"ok": False, "error": f"{type(exc).__name__}: {exc}"}
            ok = ok and report[key]["ok"]
    report["torch"] = check_torch(gpus)
    report["metrics"] = check_metrics(layer, gpus)
    ok = ok and report["torch"].get("ok", True) and report["metrics"]["ok"]
    report["ok"] = ok
    print(json.dumps(report, indent=2, default=str))
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
