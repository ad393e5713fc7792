"""Build small test models and model repositories on disk.

Every ONNX model is built with ``onnx.helper`` so tests never depend on binary fixtures. Each
ONNX builder has a Python-backend twin with the same ``config.pbtxt`` body (only the
``platform``/``backend`` line differs), so a test can run the same model on this server and on
NVIDIA's tritonserver, which ships no ONNX Runtime backend here.

Datatype names are the KServe v2 protocol names (``FP32``, ``BYTES`` ...); configs get the
matching ``TYPE_*`` names.
"""

from __future__ import annotations

import shutil
import textwrap
from collections.abc import Iterable, Sequence
from pathlib import Path

import numpy as np
import onnx
from onnx import TensorProto, helper

ROOT = Path(__file__).resolve().parent.parent
BUNDLED_REPOSITORY = ROOT / "model_repository"

# Opset 14 is the first where Add/Sub cover the 8- and 16-bit integer types; IR 8 keeps the
# files loadable by the ONNX Runtime releases that Triton 2.3x-2.5x ship.
ONNX_OPSET = 14
ONNX_IR_VERSION = 8

# numpy has no bfloat16: BF16 values travel as their raw 16-bit patterns, which is also how the
# binary tensor extension carries them.
_TYPES: dict[str, tuple[int, type]] = {
    "BOOL": (TensorProto.BOOL, np.bool_),
    "INT8": (TensorProto.INT8, np.int8),
    "INT16": (TensorProto.INT16, np.int16),
    "INT32": (TensorProto.INT32, np.int32),
    "INT64": (TensorProto.INT64, np.int64),
    "UINT8": (TensorProto.UINT8, np.uint8),
    "UINT16": (TensorProto.UINT16, np.uint16),
    "UINT32": (TensorProto.UINT32, np.uint32),
    "UINT64": (TensorProto.UINT64, np.uint64),
    "FP16": (TensorProto.FLOAT16, np.float16),
    "FP32": (TensorProto.FLOAT, np.float32),
    "FP64": (TensorProto.DOUBLE, np.float64),
    "BF16": (TensorProto.BFLOAT16, np.uint16),
    "BYTES": (TensorProto.STRING, np.object_),
}
ONNX_ELEMENT_TYPES: dict[str, int] = {name: elem for name, (elem, _) in _TYPES.items()}
NUMPY_DTYPES: dict[str, np.dtype] = {name: np.dtype(dt) for name, (_, dt) in _TYPES.items()}

# ONNX Runtime's CPU provider has an Identity kernel for every one of these (BF16 included).
IDENTITY_DATATYPES: tuple[str, ...] = tuple(ONNX_ELEMENT_TYPES)
# Add and Sub have no BOOL or BF16 kernel on the CPU provider.
ADD_SUB_DATATYPES: tuple[str, ...] = tuple(
    dt for dt in ONNX_ELEMENT_TYPES if dt not in ("BOOL", "BF16", "BYTES")
)
# The Python backend exchanges numpy arrays; it cannot represent BF16 that way.
PYTHON_DATATYPES: tuple[str, ...] = tuple(dt for dt in ONNX_ELEMENT_TYPES if dt != "BF16")


def config_type(datatype: str) -> str:
    """The model-config enum name for a protocol datatype (BYTES is TYPE_STRING)."""
    if datatype not in ONNX_ELEMENT_TYPES:
        raise ValueError(f"unknown datatype {datatype!r}")
    return "TYPE_STRING" if datatype == "BYTES" else f"TYPE_{datatype}"


def _dims_text(dims: Sequence[int]) -> str:
    return "[ " + ", ".join(str(d) for d in dims) + " ]"


def tensor_config(name: str, datatype: str, dims: Sequence[int], extra: str = "") -> str:
    """One ``input``/``output`` list entry in text format."""
    body = f'    name: "{name}"\n    data_type: {config_type(datatype)}\n    dims: {_dims_text(dims)}\n'
    if extra:
        body += textwrap.indent(extra.strip(), "    ") + "\n"
    return "  {\n" + body + "  }"


def model_config(
    name: str,
    *,
    inputs: Iterable[tuple[str, str, Sequence[int]]],
    outputs: Iterable[tuple[str, str, Sequence[int]]],
    max_batch_size: int = 8,
    platform: str | None = None,
    backend: str | None = None,
    dynamic_batching: bool = True,
    extra: str = "",
) -> str:
    """A complete ``config.pbtxt``; ``inputs``/``outputs`` are ``(name, datatype, dims)``."""
    lines = [f'name: "{name}"']
    if platform:
        lines.append(f'platform: "{platform}"')
    if backend:
        lines.append(f'backend: "{backend}"')
    lines.append(f"max_batch_size: {max_batch_size}")
    lines.append("input [\n" + ",\n".join(tensor_config(*t) for t in inputs) + "\n]")
    lines.append("output [\n" + ",\n".join(tensor_config(*t) for t in outputs) + "\n]")
    if dynamic_batching and max_batch_size > 0:
        lines.append("dynamic_batching { }")
    if extra:
        lines.append(extra.strip())
    return "\n".join(lines) + "\n"


def write_config(repo: Path, name: str, text: str) -> Path:
    """Write ``<repo>/<name>/config.pbtxt`` (creating the model directory) and return its path."""
    model_dir = Path(repo) / name
    model_dir.mkdir(parents=True, exist_ok=True)
    path = model_dir / "config.pbtxt"
    path.write_text(text)
    return path


def write_labels(
    repo: Path, name: str, labels: Sequence[str], filename: str = "labels.txt"
) -> Path:
    path = Path(repo) / name / filename
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(f"{label}\n" for label in labels))
    return path


def _onnx_shape(dims: Sequence[int], batched: bool) -> list[int | str]:
    shape: list[int | str] = ["batch"] if batched else []
    shape += [d if d >= 0 else f"dim{i}" for i, d in enumerate(dims)]
    return shape


def _finish(graph: onnx.GraphProto) -> onnx.ModelProto:
    model = helper.make_model(
        graph,
        opset_imports=[helper.make_opsetid("", ONNX_OPSET)],
        ir_version=ONNX_IR_VERSION,
        producer_name="tests.models",
    )
    onnx.checker.check_model(model)
    return model


def onnx_identity_model(
    datatype: str = "FP32",
    dims: Sequence[int] = (-1,),
    *,
    batched: bool = True,
    input_name: str = "INPUT0",
    output_name: str = "OUTPUT0",
) -> onnx.ModelProto:
    """``output = input``; a leading dynamic dimension is added when ``batched``."""
    elem = ONNX_ELEMENT_TYPES[datatype]
    shape = _onnx_shape(dims, batched)
    graph = helper.make_graph(
        [helper.make_node("Identity", [input_name], [output_name])],
        "identity",
        [helper.make_tensor_value_info(input_name, elem, shape)],
        [helper.make_tensor_value_info(output_name, elem, shape)],
    )
    return _finish(graph)


def onnx_add_sub_model(
    datatype: str = "INT32",
    dims: Sequence[int] = (16,),
    *,
    batched: bool = True,
    input_names: tuple[str, str] = ("INPUT0", "INPUT1"),
    output_names: tuple[str, str] = ("OUTPUT0", "OUTPUT1"),
) -> onnx.ModelProto:
    """``OUTPUT0 = INPUT0 + INPUT1`` and ``OUTPUT1 = INPUT0 - INPUT1``."""
    if datatype not in ADD_SUB_DATATYPES:
        raise ValueError(f"ONNX Runtime has no Add/Sub kernel for {datatype}")
    elem = ONNX_ELEMENT_TYPES[datatype]
    shape = _onnx_shape(dims, batched)
    a, b = input_names
    graph = helper.make_graph(
        [
            helper.make_node("Add", [a, b], [output_names[0]]),
            helper.make_node("Sub", [a, b], [output_names[1]]),
        ],
        "add_sub",
        [helper.make_tensor_value_info(n, elem, shape) for n in input_names],
        [helper.make_tensor_value_info(n, elem, shape) for n in output_names],
    )
    return _finish(graph)


def write_onnx_model(
    repo: Path,
    name: str,
    model: onnx.ModelProto | bytes,
    *,
    config: str | None = None,
    versions: Iterable[int] = (1,),
    filename: str = "model.onnx",
) -> Path:
    """Write the model under each version directory; ``config`` None leaves config.pbtxt out."""
    model_dir = Path(repo) / name
    data = model if isinstance(model, bytes) else model.SerializeToString()
    for version in versions:
        version_dir = model_dir / str(version)
        version_dir.mkdir(parents=True, exist_ok=True)
        (version_dir / filename).write_bytes(data)
    if config is not None:
        write_config(repo, name, config)
    model_dir.mkdir(parents=True, exist_ok=True)
    return model_dir


def _backend_lines(backend: str) -> dict[str, str | None]:
    if backend == "onnxruntime":
        return {"platform": "onnxruntime_onnx", "backend": None}
    return {"platform": None, "backend": backend}


def identity_config(
    name: str,
    datatype: str = "FP32",
    dims: Sequence[int] = (-1,),
    max_batch_size: int = 8,
    *,
    backend: str = "onnxruntime",
    dynamic_batching: bool = True,
    extra: str = "",
) -> str:
    return model_config(
        name,
        inputs=[("INPUT0", datatype, dims)],
        outputs=[("OUTPUT0", datatype, dims)],
        max_batch_size=max_batch_size,
        dynamic_batching=dynamic_batching,
        extra=extra,
        **_backend_lines(backend),
    )


def add_sub_config(
    name: str,
    datatype: str = "INT32",
    dims: Sequence[int] = (16,),
    max_batch_size: int = 8,
    *,
    backend: str = "onnxruntime",
    dynamic_batching: bool = True,
    extra: str = "",
) -> str:
    return model_config(
        name,
        inputs=[("INPUT0", datatype, dims), ("INPUT1", datatype, dims)],
        outputs=[("OUTPUT0", datatype, dims), ("OUTPUT1", datatype, dims)],
        max_batch_size=max_batch_size,
        dynamic_batching=dynamic_batching,
        extra=extra,
        **_backend_lines(backend),
    )


def write_onnx_identity(
    repo: Path,
    name: str,
    datatype: str = "FP32",
    dims: Sequence[int] = (-1,),
    max_batch_size: int = 8,
    config_extra: str = "",
    *,
    dynamic_batching: bool = True,
    with_config: bool = True,
    versions: Iterable[int] = (1,),
) -> Path:
    """An ONNX identity model INPUT0 -> OUTPUT0; returns the model directory."""
    model = onnx_identity_model(datatype, dims, batched=max_batch_size > 0)
    config = identity_config(
        name, datatype, dims, max_batch_size, dynamic_batching=dynamic_batching, extra=config_extra
    )
    return write_onnx_model(
        repo, name, model, config=config if with_config else None, versions=versions
    )


def write_onnx_add_sub(
    repo: Path,
    name: str,
    datatype: str = "INT32",
    dims: Sequence[int] = (16,),
    max_batch_size: int = 8,
    config_extra: str = "",
    *,
    dynamic_batching: bool = True,
    with_config: bool = True,
    versions: Iterable[int] = (1,),
) -> Path:
    """An ONNX add/sub model shaped like Triton's ``simple`` example; returns the model dir."""
    model = onnx_add_sub_model(datatype, dims, batched=max_batch_size > 0)
    config = add_sub_config(
        name, datatype, dims, max_batch_size, dynamic_batching=dynamic_batching, extra=config_extra
    )
    return write_onnx_model(
        repo, name, model, config=config if with_config else None, versions=versions
    )


# Generic Python-backend sources. They read tensor names and types from the model config, so
# one source serves every datatype and shape.
_PYTHON_PREAMBLE = """\
import json

import triton_python_backend_utils as pb_utils


class TritonPythonModel:
    def initialize(self, args):
        config = json.loads(args["model_config"])
        self.inputs = [i["name"] for i in config["input"]]
        self.outputs = [o["name"] for o in config["output"]]
        self.dtypes = [pb_utils.triton_string_to_numpy(o["data_type"]) for o in config["output"]]

    def execute(self, requests):
        return [pb_utils.InferenceResponse(output_tensors=self.compute(r)) for r in requests]

    def arrays(self, request):
        return [pb_utils.get_input_tensor_by_name(request, n).as_numpy() for n in self.inputs]
"""

PYTHON_IDENTITY_SOURCE = (
    _PYTHON_PREAMBLE
    + """
    def compute(self, request):
        return [pb_utils.Tensor(n, a) for n, a in zip(self.outputs, self.arrays(request))]
"""
)

PYTHON_ADD_SUB_SOURCE = (
    _PYTHON_PREAMBLE
    + """
    def compute(self, request):
        a, b = self.arrays(request)
        results = (a + b, a - b)
        return [
            pb_utils.Tensor(n, r.astype(t)) for n, r, t in zip(self.outputs, results, self.dtypes)
        ]
"""
)


def write_python_model(
    repo: Path,
    name: str,
    source: str,
    config: str | None,
    *,
    versions: Iterable[int] = (1,),
) -> Path:
    """Write ``<version>/model.py`` for each version and, unless None, the config."""
    model_dir = Path(repo) / name
    for version in versions:
        version_dir = model_dir / str(version)
        version_dir.mkdir(parents=True, exist_ok=True)
        (version_dir / "model.py").write_text(source)
    if config is not None:
        write_config(repo, name, config)
    model_dir.mkdir(parents=True, exist_ok=True)
    return model_dir


def write_python_probe(repo: Path, name: str, source: str, output: str = "BYTES") -> Path:
    """A Python model without batching, with one INT32 [1] input ``IN`` and one [1] output
    ``OUT`` of type ``output``: the shape of the test models that report what they saw."""
    config = model_config(
        name,
        backend="python",
        max_batch_size=0,
        inputs=[("IN", "INT32", [1])],
        outputs=[("OUT", output, [1])],
    )
    return write_python_model(repo, name, source, config)


def write_python_identity(
    repo: Path,
    name: str,
    datatype: str = "FP32",
    dims: Sequence[int] = (-1,),
    max_batch_size: int = 8,
    config_extra: str = "",
    *,
    dynamic_batching: bool = True,
    versions: Iterable[int] = (1,),
) -> Path:
    """The Python-backend twin of :func:`write_onnx_identity`."""
    if datatype not in PYTHON_DATATYPES:
        raise ValueError(f"the Python backend cannot carry {datatype} as numpy")
    config = identity_config(
        name,
        datatype,
        dims,
        max_batch_size,
        backend="python",
        dynamic_batching=dynamic_batching,
        extra=config_extra,
    )
    return write_python_model(repo, name, PYTHON_IDENTITY_SOURCE, config, versions=versions)


def write_python_add_sub(
    repo: Path,
    name: str,
    datatype: str = "INT32",
    dims: Sequence[int] = (16,),
    max_batch_size: int = 8,
    config_extra: str = "",
    *,
    dynamic_batching: bool = True,
    versions: Iterable[int] = (1,),
) -> Path:
    """The Python-backend twin of :func:`write_onnx_add_sub`."""
    if datatype not in ADD_SUB_DATATYPES:
        raise ValueError(f"add/sub is undefined for {datatype}")
    config = add_sub_config(
        name,
        datatype,
        dims,
        max_batch_size,
        backend="python",
        dynamic_batching=dynamic_batching,
        extra=config_extra,
    )
    return write_python_model(repo, name, PYTHON_ADD_SUB_SOURCE, config, versions=versions)


def copy_bundled_model(repo: Path, name: str) -> Path:
    """Copy one model of the bundled ``model_repository/`` into ``repo``."""
    target = Path(repo) / name
    shutil.copytree(BUNDLED_REPOSITORY / name, target)
    return target


def sample_array(
    datatype: str, shape: Sequence[int], rng: np.random.Generator | None = None
) -> np.ndarray:
    """Random test data of ``datatype``; BYTES are byte strings, BF16 raw bit patterns."""
    rng = rng if rng is not None else np.random.default_rng(0)
    size = int(np.prod(shape, dtype=np.int64))
    dtype = NUMPY_DTYPES[datatype]
    if datatype == "BOOL":
        values: np.ndarray = rng.integers(0, 2, size).astype(np.bool_)
    elif datatype == "BYTES":
        values = np.array([f"s{rng.integers(0, 10**6)}".encode() for _ in range(size)], np.object_)
    elif datatype == "BF16":
        # Round-trip through float32's top half so every pattern is a finite bfloat16.
        floats = rng.uniform(-100, 100, size).astype(np.float32)
        values = (floats.view(np.uint32) >> 16).astype(np.uint16)
    elif dtype.kind in "iu":
        info = np.iinfo(dtype)
        # Small magnitudes keep add/sub results inside the type's range.
        low = max(int(info.min), -50)
        values = rng.integers(low, min(int(info.max), 50), size, endpoint=True).astype(dtype)
    else:
        values = rng.uniform(-100, 100, size).astype(dtype)
    return values.reshape(tuple(shape))


def bf16_client_array(values: np.ndarray | Sequence[float]) -> np.ndarray:
    """Floats exact in BF16, as the installed tritonclient takes and gives BF16 tensors:
    ``ml_dtypes.bfloat16`` arrays from r26.06 (2.73) on, float32 (packed by truncation)
    before. Compare what ``as_numpy`` gives back after ``.astype(np.float32)``."""
    from tritonclient.utils import triton_to_np_dtype

    return np.asarray(values, dtype=np.float32).astype(triton_to_np_dtype("BF16"))
