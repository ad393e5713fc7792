"""What a tensor costs on its way to and from a TorchScript model on a GPU, in process.

    python bench/gpu_transfers.py [--rounds 9] [--calls 100] [--json OUT]

A request's tensors are read-only views of the bytes they arrived in. The PyTorch backend
uploads them to the instance's device, and that upload is the module's own copy; it used to
copy each one on the host first (as it must for a CPU instance, whose module may change its
inputs in place). Outputs come back into page-locked memory from torch's pool; they used to
come back with ``.cpu()``, into pageable memory. This runs one module (``x * 2``) on CUDA
device 0 through ``PyTorchInstance.execute`` three ways, alternating: both old paths
(``before``), the upload without the host copy (``upload``), and that with the download into
page-locked memory (``now``), for a 3x224x224 FP32 image (588 KiB) and a 4 MiB tensor. It
prints the median microseconds per execution of each. Needs torch with CUDA.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from server.backends.base import Timing  # noqa: E402
from server.backends.pytorch import PyTorchInstance  # noqa: E402
from server.repository.view import ModelView, TensorSpec  # noqa: E402
from server.tensors import writable  # noqa: E402
from server.types import InferInput, InferRequest  # noqa: E402

SIZES = {"588KiB": 3 * 224 * 224, "4MiB": 1 << 20}


class UploadOnly(PyTorchInstance):
    """Outputs downloaded with ``.cpu()``, into pageable memory."""

    def _download(self, value: Any) -> np.ndarray:
        return value.cpu().numpy()


class Before(UploadOnly):
    """Also a host copy of every read-only input before the upload."""

    def _tensor(self, array: Any, name: str) -> Any:
        return self._torch.from_numpy(writable(np.asarray(array)))


PATHS = {"before": Before, "upload": UploadOnly, "now": PyTorchInstance}


def instance(cls: type[PyTorchInstance], torch: Any, device: Any) -> PyTorchInstance:
    class Double(torch.nn.Module):
        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return x * 2.0

    module = torch.jit.script(Double()).to(device)
    view = ModelView(
        name="double",
        version="1",
        platform="pytorch_libtorch",
        backend="pytorch",
        max_batch_size=0,
        inputs={"INPUT__0": TensorSpec("INPUT__0", "FP32", (-1,))},
        outputs={"OUTPUT__0": TensorSpec("OUTPUT__0", "FP32", (-1,))},
    )
    return cls(torch, module, device, view, ("positional", ["INPUT__0"]), True)


def run(target: PyTorchInstance, raw: bytes, count: int) -> Any:
    data = np.frombuffer(raw, np.float32)  # read-only, as a decoded request's input is
    request = InferRequest("double", inputs=[InferInput("INPUT__0", "FP32", (count,), data)])
    # The output comes back to the host, so each call ends when the device is done.
    return target.execute([request], Timing())[0]["OUTPUT__0"]


def per_call_us(target: PyTorchInstance, raw: bytes, count: int, calls: int) -> float:
    started = time.perf_counter()
    for _ in range(calls):
        run(target, raw, count)
    return (time.perf_counter() - started) / calls * 1e6


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=9)
    parser.add_argument("--calls", type=int, default=100)
    parser.add_argument("--json", type=Path)
    parser.add_argument("--device", default="cuda:0", help="cpu only to try the script")
    args = parser.parse_args()
    import torch

    device = torch.device(args.device)
    if device.type == "cuda" and not torch.cuda.is_available():
        print("no CUDA device", file=sys.stderr)
        return 1
    paths = {label: instance(cls, torch, device) for label, cls in PATHS.items()}
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu"
    report: dict[str, Any] = {"device": name, "sizes": {}}
    for label, count in SIZES.items():
        raw = np.arange(count, dtype=np.float32).tobytes()
        expected = np.arange(count, dtype=np.float32) * 2
        for target in paths.values():  # warm-up, and a check of the answer
            per_call_us(target, raw, count, 5)
            assert np.array_equal(np.asarray(run(target, raw, count)), expected)
        times: dict[str, list[float]] = {path: [] for path in paths}
        for _ in range(args.rounds):
            for path, target in paths.items():
                times[path].append(per_call_us(target, raw, count, args.calls))
        medians = {k: statistics.median(v) for k, v in times.items()}
        report["sizes"][label] = {
            "median_us": {k: round(v, 1) for k, v in medians.items()},
            "now_over_before": round(medians["now"] / medians["before"], 3),
            "rounds_us": {k: [round(x, 1) for x in v] for k, v in times.items()},
        }
    print(json.dumps(report, indent=2))
    if args.json:
        args.json.write_text(json.dumps(report, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
