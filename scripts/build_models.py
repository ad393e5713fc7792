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

SIMPLE_CONFIG = """\
name: "simple"
platform: "onnxruntime_onnx"
max_batch_size: 8
input [
  {
    name: "INPUT0"
    data_type: TYPE_INT32
    dims: [ 16 ]
  },
  {
    name: "INPUT1"
    data_type: TYPE_INT32
    dims: [ 16 ]
  }
]
output [
  {
    name: "OUTPUT0"
    data_type: TYPE_INT32
    dims: [ 16 ]
  },
  {
    name: "OUTPUT1"
    data_type: TYPE_INT32
    dims: [ 16 ]
  }
]
dynamic_batching { }
"""

IDENTITY_CONFIG = """\
name: "identity_fp32"
platform: "onnxruntime_onnx"
max_batch_size: 8
input [
  {
    name: "INPUT0"
    data_type: TYPE_FP32
    dims: [ -1 ]
  }
]
output [
  {
    name: "OUTPUT0"
    data_type: TYPE_FP32
    dims: [ -1 ]
  }
]
dynamic_batching { }
"""

CLASSIFIER_CONFIG = """\
name: "digits_classifier"
platform: "onnxruntime_onnx"
max_batch_size: 64
input [
  {
    name: "pixels"
    data_type: TYPE_FP32
    dims: [ 64 ]
  }
]
output [
  {
    name: "probabilities"
    data_type: TYPE_FP32
    dims: [ 10 ]
    label_filename: "labels.txt"
  },
  {
    name: "label"
    data_type: TYPE_INT64
    dims: [ 1 ]
  }
]
dynamic_batching { }
"""

ADD_SUB_PYTHON_CONFIG = """\
name: "add_sub_python"
backend: "python"
max_batch_size: 8
input [
  {
    name: "INPUT0"
    data_type: TYPE_FP32
    dims: [ 4 ]
  },
  {
    name: "INPUT1"
    data_type: TYPE_FP32
    dims: [ 4 ]
  }
]
output [
  {
    name: "OUTPUT0"
    data_type: TYPE_FP32
    dims: [ 4 ]
  },
  {
    name: "OUTPUT1"
    data_type: TYPE_FP32
    dims: [ 4 ]
  }
]
dynamic_batching { }
instance_group [
  {
    count: 1
    kind: KIND_CPU
  }
]
"""

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


def simple_model() -> onnx.ModelProto:
    shape: list[int | str] = ["batch", 16]
    graph = helper.make_graph(
        [
            helper.make_node("Add", ["INPUT0", "INPUT1"], ["OUTPUT0"]),
            helper.make_node("Sub", ["INPUT0", "INPUT1"], ["OUTPUT1"]),
        ],
        "simple",
        [helper.make_tensor_value_info(n, TensorProto.INT32, shape) for n in ("INPUT0", "INPUT1")],
        [
            helper.make_tensor_value_info(n, TensorProto.INT32, shape)
            for n in ("OUTPUT0", "OUTPUT1")
        ],
    )
    return _finish(graph)


def identity_model() -> onnx.ModelProto:
    shape: list[int | str] = ["batch", "length"]
    graph = helper.make_graph(
        [helper.make_node("Identity", ["INPUT0"], ["OUTPUT0"])],
        "identity_fp32",
        [helper.make_tensor_value_info("INPUT0", TensorProto.FLOAT, shape)],
        [helper.make_tensor_value_info("OUTPUT0", TensorProto.FLOAT, shape)],
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
    _write(repository / "simple" / "config.pbtxt", SIMPLE_CONFIG)
    _write(repository / "simple" / "1" / "model.onnx", simple_model().SerializeToString())

    _write(repository / "identity_fp32" / "config.pbtxt", IDENTITY_CONFIG)
    _write(repository / "identity_fp32" / "1" / "model.onnx", identity_model().SerializeToString())

    classifier, report = digits_classifier()
    _write(repository / "digits_classifier" / "config.pbtxt", CLASSIFIER_CONFIG)
    _write(repository / "digits_classifier" / "labels.txt", "\n".join(DIGIT_NAMES) + "\n")
    _write(repository / "digits_classifier" / "1" / "model.onnx", classifier.SerializeToString())

    _write(repository / "add_sub_python" / "config.pbtxt", ADD_SUB_PYTHON_CONFIG)
    _write(repository / "add_sub_python" / "1" / "model.py", ADD_SUB_PYTHON_MODEL)
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
