"""The bundled models, the script that builds them, and the test model factory."""

from __future__ import annotations

import ast
import queue
import socket
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import onnxruntime as ort
import pytest
import tritonclient.grpc as grpcclient
import tritonclient.http as httpclient
from google.protobuf import text_format
from tritonclient.grpc import model_config_pb2
from tritonclient.utils import InferenceServerException

from tests import models
from tests.harness import real_triton

ROOT = Path(__file__).resolve().parents[2]
BUNDLED = ROOT / "model_repository"
BUNDLED_MODELS = (
    "simple",
    "identity_fp32",
    "digits_classifier",
    "add_sub_python",
    "simple_string",
    "simple_identity",
    "simple_int8",
    "repeat_int32",
)
# Every bundled model batches dynamically except the decoupled one, which takes no batch dimension.
BATCHED_MODELS = tuple(name for name in BUNDLED_MODELS if name != "repeat_int32")


def parse_config(path: Path) -> model_config_pb2.ModelConfig:
    return text_format.Parse(path.read_text(), model_config_pb2.ModelConfig())


def session(path: Path) -> ort.InferenceSession:
    return ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])


def run_onnx(path: Path, feeds: dict[str, np.ndarray], datatype: str) -> list[np.ndarray]:
    """Run a model; BF16 goes through OrtValues because numpy has no bfloat16."""
    sess = session(path)
    if datatype == "BYTES":
        # ONNX Runtime stringifies bytes objects ("b'..'"); it must be given str.
        feeds = {k: np.vectorize(bytes.decode, otypes=[object])(v) for k, v in feeds.items()}
    if datatype != "BF16":
        return sess.run(None, feeds)
    elem = models.ONNX_ELEMENT_TYPES["BF16"]
    binding = sess.io_binding()
    for name, array in feeds.items():
        binding.bind_ortvalue_input(
            name, ort.OrtValue.ortvalue_from_numpy_with_onnx_type(array, elem)
        )
    results = []
    for out in sess.get_outputs():
        target = np.zeros(next(iter(feeds.values())).shape, np.uint16)
        binding.bind_ortvalue_output(
            out.name, ort.OrtValue.ortvalue_from_numpy_with_onnx_type(target, elem)
        )
        results.append(target)
    sess.run_with_iobinding(binding)
    return results


@pytest.fixture(scope="module")
def rebuilt(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("rebuilt")
    subprocess.run(
        [sys.executable, str(ROOT / "scripts" / "build_models.py"), "--output", str(out)],
        check=True,
        capture_output=True,
        text=True,
    )
    return out


def test_script_writes_every_bundled_model(rebuilt: Path) -> None:
    assert sorted(p.name for p in rebuilt.iterdir()) == sorted(BUNDLED_MODELS)
    for name in BUNDLED_MODELS:
        assert {p.relative_to(rebuilt / name) for p in (rebuilt / name).rglob("*")} == {
            p.relative_to(BUNDLED / name) for p in (BUNDLED / name).rglob("*")
        }


@pytest.mark.parametrize(
    "relative",
    [
        "simple/config.pbtxt",
        "simple/1/model.onnx",
        "identity_fp32/config.pbtxt",
        "identity_fp32/1/model.onnx",
        "digits_classifier/config.pbtxt",
        "digits_classifier/labels.txt",
        "add_sub_python/config.pbtxt",
        "add_sub_python/1/model.py",
        "simple_string/config.pbtxt",
        "simple_string/1/model.onnx",
        "simple_identity/config.pbtxt",
        "simple_identity/1/model.onnx",
        "simple_int8/config.pbtxt",
        "simple_int8/1/model.onnx",
        "repeat_int32/config.pbtxt",
        "repeat_int32/1/model.py",
    ],
)
def test_committed_files_match_the_script(rebuilt: Path, relative: str) -> None:
    assert (rebuilt / relative).read_bytes() == (BUNDLED / relative).read_bytes()


def test_committed_classifier_predicts_like_a_fresh_build(rebuilt: Path) -> None:
    # Training runs through BLAS, so compare behaviour rather than bytes.
    from sklearn.datasets import load_digits

    pixels = load_digits().data.astype(np.float32)
    fresh = session(rebuilt / "digits_classifier/1/model.onnx").run(None, {"pixels": pixels})
    committed = session(BUNDLED / "digits_classifier/1/model.onnx").run(None, {"pixels": pixels})
    np.testing.assert_allclose(fresh[0], committed[0], atol=1e-4)
    assert (fresh[1] == committed[1]).all()


@pytest.mark.parametrize("name", BATCHED_MODELS)
def test_bundled_config_is_valid_text_format(name: str) -> None:
    config = parse_config(BUNDLED / name / "config.pbtxt")
    assert config.name == name
    assert config.max_batch_size > 0
    assert config.HasField("dynamic_batching")


def test_simple_adds_and_subtracts_with_a_dynamic_batch() -> None:
    config = parse_config(BUNDLED / "simple/config.pbtxt")
    assert config.platform == "onnxruntime_onnx"
    assert [(i.name, list(i.dims)) for i in config.input] == [("INPUT0", [16]), ("INPUT1", [16])]
    sess = session(BUNDLED / "simple/1/model.onnx")
    assert [i.shape for i in sess.get_inputs()] == [["batch", 16], ["batch", 16]]
    rng = np.random.default_rng(7)
    for batch in (1, config.max_batch_size):
        a = rng.integers(-(2**20), 2**20, (batch, 16), dtype=np.int32)
        b = rng.integers(-(2**20), 2**20, (batch, 16), dtype=np.int32)
        total, diff = sess.run(["OUTPUT0", "OUTPUT1"], {"INPUT0": a, "INPUT1": b})
        assert total.dtype == np.int32
        np.testing.assert_array_equal(total, a + b)
        np.testing.assert_array_equal(diff, a - b)


def test_identity_fp32_accepts_any_length() -> None:
    config = parse_config(BUNDLED / "identity_fp32/config.pbtxt")
    assert list(config.input[0].dims) == [-1]
    sess = session(BUNDLED / "identity_fp32/1/model.onnx")
    for shape in ((1, 1), (3, 1000)):
        x = np.random.default_rng(1).standard_normal(shape).astype(np.float32)
        np.testing.assert_array_equal(sess.run(None, {"INPUT0": x})[0], x)


def test_digits_classifier_is_accurate_and_labelled() -> None:
    from sklearn.datasets import load_digits

    model_dir = BUNDLED / "digits_classifier"
    config = parse_config(model_dir / "config.pbtxt")
    probs_cfg = next(o for o in config.output if o.name == "probabilities")
    assert list(probs_cfg.dims) == [10]
    labels = (model_dir / probs_cfg.label_filename).read_text().splitlines()
    assert len(labels) == probs_cfg.dims[0]
    assert labels[0] == "zero" and labels[-1] == "nine"
    assert (model_dir / "1/model.onnx").stat().st_size < 1_000_000

    digits = load_digits()
    sess = session(model_dir / "1/model.onnx")
    probs, label = sess.run(["probabilities", "label"], {"pixels": digits.data.astype(np.float32)})
    assert probs.shape == (len(digits.target), 10) and probs.dtype == np.float32
    assert label.shape == (len(digits.target), 1) and label.dtype == np.int64
    np.testing.assert_allclose(probs.sum(axis=1), 1.0, atol=1e-5)
    np.testing.assert_array_equal(probs.argmax(axis=1), label[:, 0])
    assert (label[:, 0] == digits.target).mean() > 0.95


def _strings(values: np.ndarray) -> np.ndarray:
    return np.vectorize(str, otypes=[object])(values)


def test_simple_string_adds_and_subtracts_decimal_strings() -> None:
    config = parse_config(BUNDLED / "simple_string/config.pbtxt")
    assert [model_config_pb2.DataType.Name(i.data_type) for i in config.input] == [
        "TYPE_STRING"
    ] * 2
    assert [list(o.dims) for o in config.output] == [[16], [16]]
    sess = session(BUNDLED / "simple_string/1/model.onnx")
    rng = np.random.default_rng(3)
    a = rng.integers(-(2**20), 2**20, (3, 16), dtype=np.int32)
    b = rng.integers(-(2**20), 2**20, (3, 16), dtype=np.int32)
    total, diff = sess.run(["OUTPUT0", "OUTPUT1"], {"INPUT0": _strings(a), "INPUT1": _strings(b)})
    np.testing.assert_array_equal(total, _strings(a + b))
    np.testing.assert_array_equal(diff, _strings(a - b))
    # The client samples send "0".."15" and "1"; 0 - 1 must print as "-1".
    (diff,) = sess.run(["OUTPUT1"], {"INPUT0": _strings(a * 0), "INPUT1": _strings(a * 0 + 1)})
    assert set(diff.ravel()) == {"-1"}


def test_simple_identity_keeps_nul_and_control_bytes() -> None:
    config = parse_config(BUNDLED / "simple_identity/config.pbtxt")
    assert list(config.input[0].dims) == [-1]
    sess = session(BUNDLED / "simple_identity/1/model.onnx")
    words = np.array([["he\x00llo"] * 16, ["\x00\x01\x02\x03"] * 16], dtype=object)
    np.testing.assert_array_equal(sess.run(None, {"INPUT0": words})[0], words)


def test_simple_int8_adds_and_subtracts_int8() -> None:
    sess = session(BUNDLED / "simple_int8/1/model.onnx")
    rng = np.random.default_rng(5)
    a = rng.integers(-64, 64, (2, 16), dtype=np.int8)
    b = rng.integers(-64, 64, (2, 16), dtype=np.int8)
    total, diff = sess.run(["OUTPUT0", "OUTPUT1"], {"INPUT0": a, "INPUT1": b})
    assert total.dtype == np.int8
    np.testing.assert_array_equal(total, a + b)
    np.testing.assert_array_equal(diff, a - b)


def test_repeat_int32_is_a_decoupled_python_model() -> None:
    config = parse_config(BUNDLED / "repeat_int32/config.pbtxt")
    assert config.backend == "python" and config.max_batch_size == 0
    assert config.model_transaction_policy.decoupled
    assert not config.HasField("dynamic_batching")
    assert [(i.name, list(i.dims)) for i in config.input] == [
        ("IN", [-1]),
        ("DELAY", [-1]),
        ("WAIT", [1]),
    ]
    assert [(o.name, list(o.dims)) for o in config.output] == [("OUT", [1]), ("IDX", [1])]
    source = (BUNDLED / "repeat_int32/1/model.py").read_text()
    tree = ast.parse(source)
    classes = {n.name: n for n in tree.body if isinstance(n, ast.ClassDef)}
    methods = {f.name for f in classes["TritonPythonModel"].body if isinstance(f, ast.FunctionDef)}
    assert {"initialize", "execute", "finalize"} <= methods
    assert "get_response_sender" in source and "TRITONSERVER_RESPONSE_COMPLETE_FINAL" in source


def test_add_sub_python_is_a_triton_python_model() -> None:
    config = parse_config(BUNDLED / "add_sub_python/config.pbtxt")
    assert config.backend == "python" and not config.platform
    tree = ast.parse((BUNDLED / "add_sub_python/1/model.py").read_text())
    imports = {a.name for n in ast.walk(tree) if isinstance(n, ast.Import) for a in n.names}
    assert "triton_python_backend_utils" in imports
    classes = {n.name: n for n in tree.body if isinstance(n, ast.ClassDef)}
    methods = {f.name for f in classes["TritonPythonModel"].body if isinstance(f, ast.FunctionDef)}
    assert {"initialize", "execute"} <= methods


@pytest.mark.parametrize("datatype", models.IDENTITY_DATATYPES)
def test_factory_identity_runs_in_onnxruntime(tmp_path: Path, datatype: str) -> None:
    model_dir = models.write_onnx_identity(tmp_path, "m", datatype, dims=[-1, 3])
    config = parse_config(model_dir / "config.pbtxt")
    assert model_config_pb2.DataType.Name(config.input[0].data_type) == models.config_type(datatype)
    assert list(config.output[0].dims) == [-1, 3]
    data = models.sample_array(datatype, (2, 5, 3))
    (out,) = run_onnx(model_dir / "1/model.onnx", {"INPUT0": data}, datatype)
    if datatype == "BYTES":
        # ONNX Runtime hands strings back as str; the server encodes them to bytes.
        out = np.array([s.encode() for s in out.ravel()], np.object_).reshape(out.shape)
    assert out.shape == data.shape
    np.testing.assert_array_equal(out, data)


@pytest.mark.parametrize("datatype", models.ADD_SUB_DATATYPES)
def test_factory_add_sub_runs_in_onnxruntime(tmp_path: Path, datatype: str) -> None:
    model_dir = models.write_onnx_add_sub(tmp_path, "m", datatype, dims=[4])
    a, b = (models.sample_array(datatype, (3, 4), np.random.default_rng(s)) for s in (1, 2))
    total, diff = run_onnx(model_dir / "1/model.onnx", {"INPUT0": a, "INPUT1": b}, datatype)
    assert total.dtype == a.dtype
    np.testing.assert_array_equal(total, a + b)
    np.testing.assert_array_equal(diff, a - b)


def test_factory_unbatched_model_has_no_batch_dimension(tmp_path: Path) -> None:
    model_dir = models.write_onnx_identity(tmp_path, "m", "INT64", dims=[2, -1], max_batch_size=0)
    config = parse_config(model_dir / "config.pbtxt")
    assert config.max_batch_size == 0 and not config.HasField("dynamic_batching")
    assert session(model_dir / "1/model.onnx").get_inputs()[0].shape == [2, "dim1"]


def test_factory_versions_config_and_extras(tmp_path: Path) -> None:
    models.write_onnx_add_sub(
        tmp_path,
        "m",
        "FP32",
        versions=[1, 3],
        config_extra='version_policy: { all { } }\nparameters { key: "k" value { string_value: "v" } }',
    )
    assert (tmp_path / "m/1/model.onnx").exists() and (tmp_path / "m/3/model.onnx").exists()
    config = parse_config(tmp_path / "m/config.pbtxt")
    assert config.version_policy.HasField("all")
    assert config.parameters["k"].string_value == "v"

    models.write_onnx_identity(tmp_path, "bare", with_config=False)
    assert not (tmp_path / "bare/config.pbtxt").exists()
    assert (tmp_path / "bare/1/model.onnx").exists()


def test_factory_python_twins_share_the_onnx_config(tmp_path: Path) -> None:
    onnx_dir = models.write_onnx_add_sub(tmp_path, "a", "INT8", dims=[5])
    python_dir = models.write_python_add_sub(tmp_path, "a_py", "INT8", dims=[5])
    onnx_cfg, python_cfg = (parse_config(d / "config.pbtxt") for d in (onnx_dir, python_dir))
    assert python_cfg.backend == "python" and onnx_cfg.platform == "onnxruntime_onnx"
    assert python_cfg.input == onnx_cfg.input and python_cfg.output == onnx_cfg.output
    ast.parse((python_dir / "1/model.py").read_text())
    ast.parse(models.PYTHON_IDENTITY_SOURCE)


def test_factory_rejects_types_without_kernels(tmp_path: Path) -> None:
    with pytest.raises(ValueError):
        models.write_onnx_add_sub(tmp_path, "m", "BOOL")
    with pytest.raises(ValueError):
        models.write_python_identity(tmp_path, "m", "BF16")
    with pytest.raises(ValueError):
        models.config_type("FP8")


def _free_ports(count: int) -> list[int]:
    sockets = [socket.socket() for _ in range(count)]
    try:
        for s in sockets:
            s.bind(("127.0.0.1", 0))
        return [s.getsockname()[1] for s in sockets]
    finally:
        for s in sockets:
            s.close()


@pytest.mark.triton
def test_python_models_run_unmodified_on_tritonserver(tmp_path: Path) -> None:
    repo = tmp_path / "repo"
    models.copy_bundled_model(repo, "add_sub_python")
    models.copy_bundled_model(repo, "repeat_int32")
    models.write_python_identity(repo, "id_bytes", "BYTES", dims=[-1])
    models.write_python_identity(repo, "id_bool", "BOOL", dims=[2, -1], max_batch_size=0)
    models.write_python_add_sub(repo, "as_uint8", "UINT8", dims=[3])
    http_port, grpc_port, metrics_port = _free_ports(3)
    log = (tmp_path / "tritonserver.log").open("w")
    proc = subprocess.Popen(
        [
            str(real_triton()),
            f"--model-repository={repo}",
            f"--http-port={http_port}",
            f"--grpc-port={grpc_port}",
            f"--metrics-port={metrics_port}",
        ],
        stdout=log,
        stderr=subprocess.STDOUT,
    )
    client = httpclient.InferenceServerClient(f"127.0.0.1:{http_port}")
    try:
        # The first start also creates tritonserver's environment, which takes a while.
        deadline = time.monotonic() + 240
        while not _is_ready(client):
            assert proc.poll() is None, (tmp_path / "tritonserver.log").read_text()
            assert time.monotonic() < deadline, "tritonserver did not become ready"
            time.sleep(0.2)

        def infer(name: str, datatype: str, *arrays: np.ndarray) -> httpclient.InferResult:
            inputs = []
            for i, array in enumerate(arrays):
                tensor = httpclient.InferInput(f"INPUT{i}", list(array.shape), datatype)
                tensor.set_data_from_numpy(array)
                inputs.append(tensor)
            return client.infer(name, inputs)

        a, b = (models.sample_array("FP32", (2, 4), np.random.default_rng(s)) for s in (1, 2))
        result = infer("add_sub_python", "FP32", a, b)
        np.testing.assert_allclose(result.as_numpy("OUTPUT0"), a + b)
        np.testing.assert_allclose(result.as_numpy("OUTPUT1"), a - b)

        words = models.sample_array("BYTES", (3, 2))
        np.testing.assert_array_equal(infer("id_bytes", "BYTES", words).as_numpy("OUTPUT0"), words)
        flags = models.sample_array("BOOL", (2, 5))
        np.testing.assert_array_equal(infer("id_bool", "BOOL", flags).as_numpy("OUTPUT0"), flags)
        a, b = (models.sample_array("UINT8", (4, 3), np.random.default_rng(s)) for s in (3, 4))
        result = infer("as_uint8", "UINT8", a, b)
        np.testing.assert_array_equal(result.as_numpy("OUTPUT0"), a + b)
        np.testing.assert_array_equal(result.as_numpy("OUTPUT1"), a - b)

        values = np.arange(40, 45, dtype=np.int32)
        streamed = repeat_stream(f"127.0.0.1:{grpc_port}", values)
        assert [r.as_numpy("OUT").tolist() for r in streamed] == [[v] for v in values]
        assert [r.as_numpy("IDX").tolist() for r in streamed] == [[i] for i in range(len(values))]
    finally:
        # tritonserver waits up to its exit timeout for open keep-alive connections.
        client.close()
        proc.terminate()
        proc.wait(timeout=60)
        log.close()


def repeat_stream(url: str, values: np.ndarray, delay_ms: int = 1) -> list[grpcclient.InferResult]:
    """Stream one request to ``repeat_int32`` and collect its ``len(values)`` responses."""
    results: queue.Queue[grpcclient.InferResult | InferenceServerException] = queue.Queue()
    inputs = [
        grpcclient.InferInput("IN", [len(values)], "INT32"),
        grpcclient.InferInput("DELAY", [len(values)], "UINT32"),
        grpcclient.InferInput("WAIT", [1], "UINT32"),
    ]
    inputs[0].set_data_from_numpy(values)
    inputs[1].set_data_from_numpy(np.full(len(values), delay_ms, np.uint32))
    inputs[2].set_data_from_numpy(np.array([delay_ms], np.uint32))
    with grpcclient.InferenceServerClient(url) as client:
        client.start_stream(callback=lambda result, error: results.put(error or result))
        client.async_stream_infer("repeat_int32", inputs)
        collected = [results.get(timeout=30) for _ in values]
    answered: list[grpcclient.InferResult] = []
    for item in collected:
        if isinstance(item, InferenceServerException):
            raise item
        answered.append(item)
    return answered


def _is_ready(client: httpclient.InferenceServerClient) -> bool:
    try:
        return bool(client.is_server_ready())
    except Exception:
        return False
