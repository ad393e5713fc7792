"""The benchmark's models, written deterministically into a Triton model repository.

- ``identity``: FP32 [16] -> the same, the cheapest possible model, so the figures measure the
  server rather than the model. ``identity_py`` is its Python-backend twin (the same config but
  for the backend line), served by NVIDIA's tritonserver and by ours.
- ``mlp`` / ``mlp_nobatch``: FP32 [256] -> 512 -> 512 -> [10], ReLU; the same weights with
  dynamic batching on and off.
- ``heavy``: FP32 [2048] -> 4096 -> 4096 -> 4096 -> [2048]; about a millisecond of compute per item at
  its best batch size on this machine, with about 20 KB of JSON each way per request.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

OPSET = 14
IR_VERSION = 8
MAX_BATCH = 64


@dataclass(frozen=True)
class ModelSpec:
    name: str
    onnx_file: str  # the shared ONNX file's stem; several configs may serve one file
    input_size: int
    output_size: int
    batching: bool
    backend: str = "onnxruntime"


IDENTITY = ModelSpec("identity", "identity", 16, 16, batching=True)
IDENTITY_PY = ModelSpec("identity_py", "identity", 16, 16, batching=True, backend="python")
MLP = ModelSpec("mlp", "mlp", 256, 10, batching=True)
MLP_NOBATCH = ModelSpec("mlp_nobatch", "mlp", 256, 10, batching=False)
HEAVY = ModelSpec("heavy", "heavy", 2048, 2048, batching=True)
ALL = (IDENTITY, IDENTITY_PY, MLP, MLP_NOBATCH, HEAVY)
BY_NAME = {m.name: m for m in ALL}

_LAYERS = {"mlp": (256, 512, 512, 10), "heavy": (2048, 4096, 4096, 4096, 2048)}

PYTHON_IDENTITY = """\
import triton_python_backend_utils as pb_utils


class TritonPythonModel:
    def execute(self, requests):
        responses = []
        for request in requests:
            data = pb_utils.get_input_tensor_by_name(request, "INPUT0").as_numpy()
            responses.append(pb_utils.InferenceResponse([pb_utils.Tensor("OUTPUT0", data)]))
        return responses
"""


def _finish(graph: onnx.GraphProto) -> onnx.ModelProto:
    model = helper.make_model(
        graph, opset_imports=[helper.make_opsetid("", OPSET)], ir_version=IR_VERSION
    )
    onnx.checker.check_model(model)
    return model


def identity_model(size: int) -> onnx.ModelProto:
    shape: list[int | str] = ["batch", size]
    graph = helper.make_graph(
        [helper.make_node("Identity", ["INPUT0"], ["OUTPUT0"])],
        "identity",
        [helper.make_tensor_value_info("INPUT0", TensorProto.FLOAT, shape)],
        [helper.make_tensor_value_info("OUTPUT0", TensorProto.FLOAT, shape)],
    )
    return _finish(graph)


def mlp_model(widths: tuple[int, ...], seed: int = 0) -> onnx.ModelProto:
    """Dense layers with ReLU between them; He-scaled weights keep activations finite."""
    rng = np.random.default_rng(seed)
    nodes, initializers = [], []
    current = "INPUT0"
    for index, (fan_in, fan_out) in enumerate(zip(widths, widths[1:], strict=False)):
        weight = (rng.standard_normal((fan_in, fan_out)) * np.sqrt(2.0 / fan_in)).astype(np.float32)
        bias = np.zeros(fan_out, dtype=np.float32)
        initializers += [
            numpy_helper.from_array(weight, f"w{index}"),
            numpy_helper.from_array(bias, f"b{index}"),
        ]
        last = index == len(widths) - 2
        gemm_out = "OUTPUT0" if last else f"h{index}"
        nodes.append(helper.make_node("Gemm", [current, f"w{index}", f"b{index}"], [gemm_out]))
        if not last:
            nodes.append(helper.make_node("Relu", [gemm_out], [f"r{index}"]))
            current = f"r{index}"
    graph = helper.make_graph(
        nodes,
        "mlp",
        [helper.make_tensor_value_info("INPUT0", TensorProto.FLOAT, ["batch", widths[0]])],
        [helper.make_tensor_value_info("OUTPUT0", TensorProto.FLOAT, ["batch", widths[-1]])],
        initializers,
    )
    return _finish(graph)


def onnx_model(stem: str) -> onnx.ModelProto:
    if stem == "identity":
        return identity_model(IDENTITY.input_size)
    return mlp_model(_LAYERS[stem])


def config_text(spec: ModelSpec) -> str:
    backend = 'backend: "python"' if spec.backend == "python" else 'platform: "onnxruntime_onnx"'
    lines = [
        f'name: "{spec.name}"',
        backend,
        f"max_batch_size: {MAX_BATCH}",
        f'input [ {{ name: "INPUT0" data_type: TYPE_FP32 dims: [ {spec.input_size} ] }} ]',
        f'output [ {{ name: "OUTPUT0" data_type: TYPE_FP32 dims: [ {spec.output_size} ] }} ]',
        "instance_group [ { count: 1 kind: KIND_CPU } ]",
    ]
    if spec.batching:
        lines.append("dynamic_batching { }")
    return "\n".join(lines) + "\n"


def onnx_path(cache: Path, stem: str) -> Path:
    """The ONNX file for ``stem`` under ``cache``, built once (the weights are seeded)."""
    path = cache / f"{stem}.onnx"
    if not path.exists():
        cache.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(".tmp")
        tmp.write_bytes(onnx_model(stem).SerializeToString())
        tmp.replace(path)
    return path


def write_repository(root: Path, specs: tuple[ModelSpec, ...], cache: Path) -> Path:
    """A Triton model repository holding ``specs``; ONNX files are linked from ``cache``."""
    root.mkdir(parents=True, exist_ok=True)
    for spec in specs:
        version = root / spec.name / "1"
        version.mkdir(parents=True, exist_ok=True)
        (root / spec.name / "config.pbtxt").write_text(config_text(spec))
        if spec.backend == "python":
            (version / "model.py").write_text(PYTHON_IDENTITY)
        else:
            target = version / "model.onnx"
            if not target.exists():
                target.symlink_to(onnx_path(cache, spec.onnx_file))
    return root


def fingerprint() -> str:
    """Changes when the model definitions change, so stale cached files are not reused."""
    text = json.dumps({"layers": _LAYERS, "identity": IDENTITY.input_size, "opset": OPSET})
    return hashlib.sha256(text.encode()).hexdigest()[:12]
