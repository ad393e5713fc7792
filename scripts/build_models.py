"""Build the bundled example models into ``model_repository/``.

Run ``python scripts/build_models.py`` from the repository root. The output is deterministic:
the ONNX graphs are written with ``onnx.helper`` and the classifier is trained with fixed seeds on
scikit-learn's bundled digits data, so rebuilding reproduces the committed files.
"""

from __future__ import annotations

import argparse
import sys
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import onnx
from onnx import TensorProto, helper

ROOT = Path(__file__).resolve().parent.parent
DEFAULT_REPOSITORY = ROOT / "model_repository"

# Opset 14 / IR 8 load on every ONNX Runtime release Triton has shipped since 2021.
ONNX_OPSET = 14
ONNX_IR_VERSION = 8
DIGIT_NAMES = ("zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine")

ONE_CPU_INSTANCE = """\
instance_group [
  {
    count: 1
    kind: KIND_CPU
  }
]
"""


@dataclass(frozen=True)
class Tensor:
    """One ``input``/``output`` entry of a config; ``extra`` lines go after ``dims``."""

    name: str
    data_type: str
    dims: tuple[int, ...]
    extra: tuple[str, ...] = ()


def _tensor_block(tensor: Tensor) -> str:
    dims = ", ".join(str(d) for d in tensor.dims)
    lines = [f'name: "{tensor.name}"', f"data_type: TYPE_{tensor.data_type}", f"dims: [ {dims} ]"]
    body = "".join(f"    {line}\n" for line in (*lines, *tensor.extra))
    return "  {\n" + body + "  }"


def render_config(
    name: str,
    runtime: str,
    max_batch_size: int,
    inputs: list[Tensor],
    outputs: list[Tensor],
    tail: str = "dynamic_batching { }\n",
) -> str:
    """A ``config.pbtxt`` in the layout Triton's documentation uses; ``runtime`` is the
    ``platform: ...`` or ``backend: ...`` line and ``tail`` holds the blocks after the outputs."""
    sections = [f'name: "{name}"', runtime, f"max_batch_size: {max_batch_size}"]
    for key, tensors in (("input", inputs), ("output", outputs)):
        sections.append(f"{key} [\n" + ",\n".join(_tensor_block(t) for t in tensors) + "\n]")
    return "\n".join(sections) + "\n" + tail


def _pair(prefix: str, data_type: str, dims: tuple[int, ...]) -> list[Tensor]:
    return [Tensor(f"{prefix}{i}", data_type, dims) for i in (0, 1)]


ONNX = 'platform: "onnxruntime_onnx"'
PYTHON = 'backend: "python"'

SIMPLE_CONFIG = render_config(
    "simple", ONNX, 8, _pair("INPUT", "INT32", (16,)), _pair("OUTPUT", "INT32", (16,))
)
IDENTITY_CONFIG = render_config(
    "identity_fp32", ONNX, 8, [Tensor("INPUT0", "FP32", (-1,))], [Tensor("OUTPUT0", "FP32", (-1,))]
)
CLASSIFIER_CONFIG = render_config(
    "digits_classifier",
    ONNX,
    64,
    [Tensor("pixels", "FP32", (64,))],
    [
        Tensor("probabilities", "FP32", (10,), ('label_filename: "labels.txt"',)),
        Tensor("label", "INT64", (1,)),
    ],
)
ADD_SUB_PYTHON_CONFIG = render_config(
    "add_sub_python",
    PYTHON,
    8,
    _pair("INPUT", "FP32", (4,)),
    _pair("OUTPUT", "FP32", (4,)),
    tail="dynamic_batching { }\n" + ONE_CPU_INSTANCE,
)
SIMPLE_STRING_CONFIG = render_config(
    "simple_string", ONNX, 8, _pair("INPUT", "STRING", (16,)), _pair("OUTPUT", "STRING", (16,))
)
SIMPLE_IDENTITY_CONFIG = render_config(
    "simple_identity",
    ONNX,
    8,
    [Tensor("INPUT0", "STRING", (-1,))],
    [Tensor("OUTPUT0", "STRING", (-1,))],
)
SIMPLE_INT8_CONFIG = render_config(
    "simple_int8", ONNX, 8, _pair("INPUT", "INT8", (16,)), _pair("OUTPUT", "INT8", (16,))
)
REPEAT_INT32_CONFIG = render_config(
    "repeat_int32",
    PYTHON,
    0,
    [
        Tensor("IN", "INT32", (-1,)),
        Tensor("DELAY", "UINT32", (-1,)),
        Tensor("WAIT", "UINT32", (1,)),
    ],
    [Tensor("OUT", "INT32", (1,)), Tensor("IDX", "UINT32", (1,))],
    tail="model_transaction_policy {\n  decoupled: true\n}\n" + ONE_CPU_INSTANCE,
)

ADD_SUB_PYTHON_MODEL = '''\
"""Add and subtract two FP32 vectors: OUTPUT0 = INPUT0 + INPUT1, OUTPUT1 = INPUT0 - INPUT1."""

import json

import numpy as np
import triton_python_backend_utils as pb_utils


class TritonPythonModel:
    def initialize(self, args):
        config = json.loads(args["model_config"])
        self.output_dtypes = {
            name: pb_utils.triton_string_to_numpy(
                pb_utils.get_output_config_by_name(config, name)["data_type"]
            )
            for name in ("OUTPUT0", "OUTPUT1")
        }

    def execute(self, requests):
        responses = []
        for request in requests:
            in0 = pb_utils.get_input_tensor_by_name(request, "INPUT0").as_numpy()
            in1 = pb_utils.get_input_tensor_by_name(request, "INPUT1").as_numpy()
            out0 = pb_utils.Tensor(
                "OUTPUT0", np.add(in0, in1).astype(self.output_dtypes["OUTPUT0"])
            )
            out1 = pb_utils.Tensor(
                "OUTPUT1", np.subtract(in0, in1).astype(self.output_dtypes["OUTPUT1"])
            )
            responses.append(pb_utils.InferenceResponse(output_tensors=[out0, out1]))
        return responses

    def finalize(self):
        pass
'''


REPEAT_INT32_MODEL = '''\
"""Decoupled repeat: one response per element of IN.

Response i carries OUT = [IN[i]] and IDX = [i] and goes out DELAY[i] milliseconds after the
previous one; WAIT[0] milliseconds after the last response the request is released with the
final flag. Each request is answered from its own thread, so requests overlap.
"""

import threading
import time

import numpy as np
import triton_python_backend_utils as pb_utils


class TritonPythonModel:
    def initialize(self, args):
        self.workers = []

    def execute(self, requests):
        self.workers = [t for t in self.workers if t.is_alive()]
        for request in requests:
            worker = threading.Thread(target=self.repeat, args=(request,), daemon=True)
            worker.start()
            self.workers.append(worker)
        return None

    def repeat(self, request):
        sender = request.get_response_sender()
        values = pb_utils.get_input_tensor_by_name(request, "IN").as_numpy()
        delays = pb_utils.get_input_tensor_by_name(request, "DELAY").as_numpy()
        wait = pb_utils.get_input_tensor_by_name(request, "WAIT").as_numpy()
        if delays.shape != values.shape:
            error = pb_utils.TritonError(
                f"expected DELAY to have the shape of IN {list(values.shape)}, "
                f"got {list(delays.shape)}"
            )
            sender.send(
                pb_utils.InferenceResponse(error=error),
                flags=pb_utils.TRITONSERVER_RESPONSE_COMPLETE_FINAL,
            )
            return
        for index, (value, delay) in enumerate(zip(values, delays)):
            time.sleep(int(delay) / 1000)
            if sender.is_cancelled():
                break
            out = pb_utils.Tensor("OUT", np.array([value], dtype=np.int32))
            idx = pb_utils.Tensor("IDX", np.array([index], dtype=np.uint32))
            sender.send(pb_utils.InferenceResponse(output_tensors=[out, idx]))
        time.sleep(int(wait[0]) / 1000)
        sender.send(flags=pb_utils.TRITONSERVER_RESPONSE_COMPLETE_FINAL)

    def finalize(self):
        for worker in self.workers:
            worker.join()
'''


@dataclass(frozen=True)
class ClassifierReport:
    train_samples: int
    test_samples: int
    test_accuracy: float


def _finish(graph: onnx.GraphProto) -> onnx.ModelProto:
    model = helper.make_model(
        graph,
        opset_imports=[helper.make_opsetid("", ONNX_OPSET)],
        ir_version=ONNX_IR_VERSION,
        producer_name="build_models",
    )
    onnx.checker.check_model(model)
    return model


def add_sub_model(name: str = "simple", elem_type: int = TensorProto.INT32) -> onnx.ModelProto:
    shape: list[int | str] = ["batch", 16]
    graph = helper.make_graph(
        [
            helper.make_node("Add", ["INPUT0", "INPUT1"], ["OUTPUT0"]),
            helper.make_node("Sub", ["INPUT0", "INPUT1"], ["OUTPUT1"]),
        ],
        name,
        [helper.make_tensor_value_info(n, elem_type, shape) for n in ("INPUT0", "INPUT1")],
        [helper.make_tensor_value_info(n, elem_type, shape) for n in ("OUTPUT0", "OUTPUT1")],
    )
    return _finish(graph)


def string_add_sub_model() -> onnx.ModelProto:
    """``simple`` over decimal strings: ONNX Runtime's ``Cast`` parses each element into an
    INT32 and prints the results back, so ``"-1"`` comes out for 0 - 1."""
    shape: list[int | str] = ["batch", 16]
    nodes = [
        helper.make_node("Cast", ["INPUT0"], ["a"], to=TensorProto.INT32),
        helper.make_node("Cast", ["INPUT1"], ["b"], to=TensorProto.INT32),
        helper.make_node("Add", ["a", "b"], ["sum"]),
        helper.make_node("Sub", ["a", "b"], ["difference"]),
        helper.make_node("Cast", ["sum"], ["OUTPUT0"], to=TensorProto.STRING),
        helper.make_node("Cast", ["difference"], ["OUTPUT1"], to=TensorProto.STRING),
    ]
    graph = helper.make_graph(
        nodes,
        "simple_string",
        [helper.make_tensor_value_info(n, TensorProto.STRING, shape) for n in ("INPUT0", "INPUT1")],
        [
            helper.make_tensor_value_info(n, TensorProto.STRING, shape)
            for n in ("OUTPUT0", "OUTPUT1")
        ],
    )
    return _finish(graph)


def identity_model(
    name: str = "identity_fp32", elem_type: int = TensorProto.FLOAT
) -> onnx.ModelProto:
    shape: list[int | str] = ["batch", "length"]
    graph = helper.make_graph(
        [helper.make_node("Identity", ["INPUT0"], ["OUTPUT0"])],
        name,
        [helper.make_tensor_value_info("INPUT0", elem_type, shape)],
        [helper.make_tensor_value_info("OUTPUT0", elem_type, shape)],
    )
    return _finish(graph)


def _reshape_label_output(model: onnx.ModelProto) -> None:
    """Give the predicted label a per-row dimension of 1.

    skl2onnx emits the label as a rank-1 ``[batch]`` tensor; a batching model config cannot
    describe a per-row scalar without ``reshape``, so the graph ends with ``[batch, 1]`` instead.
    """
    graph = model.graph
    label = next(o for o in graph.output if o.name == "label")
    for node in graph.node:
        node.output[:] = ["label_flat" if name == "label" else name for name in node.output]
    graph.initializer.append(helper.make_tensor("label_axes", TensorProto.INT64, [1], [1]))
    graph.node.append(helper.make_node("Unsqueeze", ["label_flat", "label_axes"], ["label"]))
    graph.output.remove(label)
    graph.output.append(helper.make_tensor_value_info("label", TensorProto.INT64, ["batch", 1]))


def _name_batch_dimension(model: onnx.ModelProto) -> None:
    for value in (*model.graph.input, *model.graph.output):
        first = value.type.tensor_type.shape.dim[0]
        if not first.HasField("dim_value"):
            first.dim_param = "batch"


def digits_classifier() -> tuple[onnx.ModelProto, ClassifierReport]:
    from skl2onnx import convert_sklearn
    from skl2onnx.common.data_types import FloatTensorType
    from sklearn.datasets import load_digits
    from sklearn.linear_model import LogisticRegression
    from sklearn.model_selection import train_test_split
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    digits = load_digits()
    features = digits.data.astype(np.float32)
    x_train, x_test, y_train, y_test = train_test_split(
        features, digits.target, test_size=0.25, random_state=0, stratify=digits.target
    )
    classifier = make_pipeline(StandardScaler(), LogisticRegression(max_iter=2000, C=0.5))
    classifier.fit(x_train, y_train)
    accuracy = float(classifier.score(x_test, y_test))

    model = convert_sklearn(
        classifier,
        name="digits_classifier",
        initial_types=[("pixels", FloatTensorType([None, 64]))],
        options={id(classifier): {"zipmap": False}},
        target_opset={"": ONNX_OPSET, "ai.onnx.ml": 3},
    )
    output_names = [o.name for o in model.graph.output]
    if sorted(output_names) != ["label", "probabilities"]:
        raise RuntimeError(f"unexpected classifier outputs {output_names}")
    _reshape_label_output(model)
    _name_batch_dimension(model)
    # skl2onnx lists the default domain twice; keep one entry per domain.
    opsets = {o.domain: o.version for o in model.opset_import}
    del model.opset_import[:]
    model.opset_import.extend(helper.make_opsetid(d, v) for d, v in sorted(opsets.items()))
    model.ir_version = ONNX_IR_VERSION
    model.producer_name = "build_models"
    model.producer_version = ""
    model.doc_string = "Logistic regression on scikit-learn's 8x8 digits (64 FP32 features)."
    onnx.checker.check_model(model)
    return model, ClassifierReport(len(x_train), len(x_test), accuracy)


def _write(path: Path, data: str | bytes) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    if isinstance(data, bytes):
        path.write_bytes(data)
    else:
        path.write_text(data)


def build(repository: Path) -> ClassifierReport:
    onnx_models = {
        "simple": (SIMPLE_CONFIG, add_sub_model()),
        "identity_fp32": (IDENTITY_CONFIG, identity_model()),
        "simple_string": (SIMPLE_STRING_CONFIG, string_add_sub_model()),
        "simple_identity": (
            SIMPLE_IDENTITY_CONFIG,
            identity_model("simple_identity", TensorProto.STRING),
        ),
        "simple_int8": (SIMPLE_INT8_CONFIG, add_sub_model("simple_int8", TensorProto.INT8)),
    }
    for name, (config, model) in onnx_models.items():
        _write(repository / name / "config.pbtxt", config)
        _write(repository / name / "1" / "model.onnx", model.SerializeToString())

    classifier, report = digits_classifier()
    _write(repository / "digits_classifier" / "config.pbtxt", CLASSIFIER_CONFIG)
    _write(repository / "digits_classifier" / "labels.txt", "\n".join(DIGIT_NAMES) + "\n")
    _write(repository / "digits_classifier" / "1" / "model.onnx", classifier.SerializeToString())

    python_models = {
        "add_sub_python": (ADD_SUB_PYTHON_CONFIG, ADD_SUB_PYTHON_MODEL),
        "repeat_int32": (REPEAT_INT32_CONFIG, REPEAT_INT32_MODEL),
    }
    for name, (config, source) in python_models.items():
        _write(repository / name / "config.pbtxt", config)
        _write(repository / name / "1" / "model.py", source)
    return report


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--output",
        type=Path,
        default=DEFAULT_REPOSITORY,
        help="model repository to write into (default: model_repository/)",
    )
    args = parser.parse_args(argv)
    report = build(args.output)
    print(
        f"digits_classifier: trained on {report.train_samples} images, "
        f"test accuracy {report.test_accuracy:.4f} on {report.test_samples} images"
    )
    print(f"wrote models into {args.output}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
