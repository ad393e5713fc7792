"""ONNX Runtime backend: one InferenceSession per model instance."""

from __future__ import annotations

import contextlib
import ctypes
import io
import logging
import os
import threading
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from server.backends.base import Backend, InstanceSpec, ModelInstance, RequestOutputs, Timing
from server.backends.batching import gather_inputs, split_outputs
from server.backends.cpus import default_intra_op_threads
from server.errors import ServerError, internal, invalid_arg, unavailable, unsupported
from server.repository.view import ModelView
from server.tensors import NUMPY_DTYPES
from server.types import InferRequest

log = logging.getLogger(__name__)

# ONNX tensor element types as onnxruntime names them -> config data types.
_ORT_TO_CONFIG = {
    "tensor(bool)": "TYPE_BOOL",
    "tensor(uint8)": "TYPE_UINT8",
    "tensor(uint16)": "TYPE_UINT16",
    "tensor(uint32)": "TYPE_UINT32",
    "tensor(uint64)": "TYPE_UINT64",
    "tensor(int8)": "TYPE_INT8",
    "tensor(int16)": "TYPE_INT16",
    "tensor(int32)": "TYPE_INT32",
    "tensor(int64)": "TYPE_INT64",
    "tensor(float16)": "TYPE_FP16",
    "tensor(float)": "TYPE_FP32",
    "tensor(double)": "TYPE_FP64",
    "tensor(string)": "TYPE_STRING",
    "tensor(bfloat16)": "TYPE_BF16",
}
DEFAULT_MAX_BATCH_SIZE = 4
_BF16 = "tensor(bfloat16)"
_ONNX_BFLOAT16 = 16  # onnx TensorProto.BFLOAT16


def _ort() -> Any:
    import onnxruntime

    return onnxruntime


# The smallest model a session can be made of (Identity over one float), serialized: creating
# a CUDA session on it shows whether onnxruntime's CUDA provider starts on this machine.
PROBE_MODEL = (
    b'\x08\x07:;\n\x10\n\x01x\x12\x01y"\x08Identity\x12\x05probeZ\x0f\n\x01x\x12\n\n'
    b"\x08\x08\x01\x12\x04\n\x02\x08\x01b\x0f\n\x01y\x12\n\n\x08\x08\x01\x12\x04\n\x02\x08\x01B\x04\n\x00\x10\r"
)
_preloaded = False
_preload_lock = threading.Lock()


def _preload_cuda_libraries(ort: Any) -> None:
    """Let onnxruntime find CUDA and cuDNN where pip installed them (the nvidia-* packages),
    once, before the first CUDA session; builds without ``preload_dlls`` skip this."""
    global _preloaded
    with _preload_lock:
        if _preloaded:
            return
        _preloaded = True
        preload = getattr(ort, "preload_dlls", None)
        if preload is None:
            return
        printed = io.StringIO()
        try:
            with contextlib.redirect_stdout(printed):  # it prints what it could not find
                preload()
        except Exception as exc:  # the provider's own load reports what is still missing
            log.debug("onnxruntime.preload_dlls failed: %s", exc)
        if printed.getvalue().strip():
            log.debug("onnxruntime.preload_dlls: %s", printed.getvalue().strip())


def _dims(shape: Sequence[Any]) -> list[int]:
    return [d if isinstance(d, int) and d >= 0 else -1 for d in shape]


def _session_options(config: Any) -> Any:
    ort = _ort()
    options = ort.SessionOptions()
    params = {k: v.string_value for k, v in config.parameters.items()}
    for key, attr in (
        ("intra_op_thread_count", "intra_op_num_threads"),
        ("inter_op_thread_count", "inter_op_num_threads"),
    ):
        if key in params:
            try:
                setattr(options, attr, int(params[key]))
            except ValueError:
                raise invalid_arg(
                    f"parameter '{key}' of model '{config.name}' must be an integer"
                ) from None
    # ONNX Runtime's own default counts the whole machine and pins its threads (see
    # server/backends/cpus.py); a count given here leaves them unpinned. Its own variable
    # for that default, where a version reads it, stays in force.
    if "intra_op_thread_count" not in params and "ORT_INTRA_OP_NUM_THREADS" not in os.environ:
        options.intra_op_num_threads = default_intra_op_threads()
    options.log_severity_level = 3
    # Spinning intra-op threads busy-wait for the next run on the very cores the event loop
    # needs between runs: on a 2-core machine that doubled the CPU per run of a small MLP and
    # halved its throughput (bench/, docs/performance.md).
    options.add_session_config_entry("session.intra_op.allow_spinning", "0")
    options.add_session_config_entry("session.inter_op.allow_spinning", "0")
    return options


class OnnxRuntimeBackend(Backend):
    name = "onnxruntime"

    def __init__(self) -> None:
        self._gpu_reason: str | None = None
        self._gpu_probed = False
        self._probe_lock = threading.Lock()

    def gpu_unusable_reason(self) -> str | None:
        """Probed once per process: a session on ``PROBE_MODEL`` with the CUDA provider."""
        with self._probe_lock:
            if not self._gpu_probed:
                self._gpu_reason = self._probe_cuda()
                self._gpu_probed = True
            return self._gpu_reason

    def _probe_cuda(self) -> str | None:
        ort = _ort()
        _preload_cuda_libraries(ort)
        if "CUDAExecutionProvider" not in ort.get_available_providers():
            return f"this onnxruntime ({ort.__version__}) has no CUDA provider"
        try:
            session = ort.InferenceSession(
                PROBE_MODEL, providers=[("CUDAExecutionProvider", {"device_id": 0})]
            )
        except Exception as exc:
            return f"onnxruntime's CUDA provider failed: {exc}"
        if "CUDAExecutionProvider" not in session.get_providers():
            return (
                "onnxruntime's CUDA provider could not start (its CUDA or cuDNN libraries "
                "are missing or of another major version; onnxruntime logged which)"
            )
        return None

    def autocomplete(self, config: Any, model_dir: Path, version_dir: Path | None) -> None:
        from server.protocol.generated import model_config_pb2 as mc

        if config.input and config.output:
            return
        if version_dir is None:
            return
        path = self.model_file(config, version_dir)
        if path.is_dir():
            path = path / "model.onnx"
        if not path.exists():
            return
        session = _ort().InferenceSession(str(path), providers=["CPUExecutionProvider"])
        inputs = [(i.name, i.type, _dims(i.shape)) for i in session.get_inputs()]
        outputs = [(o.name, o.type, _dims(o.shape)) for o in session.get_outputs()]
        all_dynamic = all(dims and dims[0] == -1 for _, _, dims in inputs + outputs)
        if config.max_batch_size == 0 and all_dynamic and not (config.input or config.output):
            config.max_batch_size = DEFAULT_MAX_BATCH_SIZE
            log.warning(
                "model '%s': max_batch_size not given; using the default of %d",
                config.name,
                DEFAULT_MAX_BATCH_SIZE,
            )
        if config.max_batch_size > 0 and not all_dynamic:
            raise invalid_arg(
                f"autofill failed for model '{config.name}': model does not support batching "
                "while non-zero max_batch_size is specified"
            )
        strip = 1 if config.max_batch_size > 0 else 0
        for existing, found in ((config.input, inputs), (config.output, outputs)):
            if existing:
                continue
            for name, ort_type, dims in found:
                tensor = existing.add()
                tensor.name = name
                tensor.data_type = mc.DataType.Value(_ORT_TO_CONFIG.get(ort_type, "TYPE_INVALID"))
                tensor.dims.extend(dims[strip:] or [1])
                if not dims[strip:] and config.max_batch_size > 0:
                    # 'dims' cannot be empty: one element per batch item, fed to the model
                    # without that dimension (Triton's onnxruntime backend does the same).
                    tensor.reshape.SetInParent()
        if config.max_batch_size > 1 and config.WhichOneof("scheduling_choice") is None:
            config.dynamic_batching.SetInParent()

    def load(
        self, config: Any, view: ModelView, version_dir: Path, instance: InstanceSpec
    ) -> ModelInstance:
        ort = _ort()
        path = self.model_file(config, version_dir)
        if path.is_dir():
            path = path / "model.onnx"
        if not path.is_file():
            raise unavailable(f"unable to find '{path}' for model '{config.name}'")
        if instance.kind == "GPU":
            _preload_cuda_libraries(ort)
            if "CUDAExecutionProvider" not in ort.get_available_providers():
                raise unavailable(
                    f"instance '{instance.name}' of model '{config.name}' needs a GPU, but "
                    "onnxruntime's CUDA provider is not available"
                )
            providers: list[Any] = [
                ("CUDAExecutionProvider", {"device_id": instance.device_id}),
                "CPUExecutionProvider",
            ]
        else:
            providers = ["CPUExecutionProvider"]
        try:
            session = ort.InferenceSession(
                str(path), sess_options=_session_options(config), providers=providers
            )
        except ServerError:
            raise
        except Exception as exc:
            raise unavailable(f"failed to load model '{config.name}': {exc}") from None
        if instance.kind == "GPU" and "CUDAExecutionProvider" not in session.get_providers():
            # onnxruntime quietly falls back to the CPU when CUDA cannot start; an instance
            # placed on a GPU must not.
            raise unavailable(
                f"instance '{instance.name}' of model '{config.name}' could not start onnxruntime's "
                f"CUDA provider on device {instance.device_id} ({instance.device_uuid})"
            )
        return OnnxRuntimeInstance(session, view, on_cpu=instance.kind != "GPU")


class OnnxRuntimeInstance(ModelInstance):
    def __init__(self, session: Any, view: ModelView, on_cpu: bool = True) -> None:
        self._session = session
        self._view = view
        # A CPU session runs only onnxruntime's own kernels; a GPU run waits on the device.
        self.short_runs_inline = on_cpu
        self._input_names = [i.name for i in session.get_inputs()]
        self._output_names = [o.name for o in session.get_outputs()]
        self._string_inputs = {i.name for i in session.get_inputs() if i.type == "tensor(string)"}
        self._bf16_inputs = {i.name for i in session.get_inputs() if i.type == _BF16}
        self._bf16_outputs = {o.name for o in session.get_outputs() if o.type == _BF16}
        self._model_shapes = {
            name: spec.reshape for name, spec in view.inputs.items() if spec.reshape is not None
        }
        self._output_reshape = {
            name: spec for name, spec in view.outputs.items() if spec.reshape is not None
        }

    def execute(self, requests: Sequence[InferRequest], timing: Timing) -> list[RequestOutputs]:
        feeds = gather_inputs(requests, self._input_names)
        batch = sum(r.batch_size for r in requests)
        for name, array in feeds.items():
            if name in self._model_shapes:
                lead = (batch,) if self._view.max_batch_size > 0 else ()
                array = feeds[name] = array.reshape(lead + tuple(self._model_shapes[name]))
            if name in self._string_inputs and array.dtype == object and array.size:
                try:
                    feeds[name] = _as_text(array)
                except UnicodeDecodeError:
                    return self._execute_text_requests(requests, timing)
            elif name in self._bf16_inputs:
                feeds[name] = _bf16_value(array)
        wanted = self._requested(requests)
        timing.input_end_ns = time.monotonic_ns()
        try:
            if self._bf16_outputs and not self._bf16_outputs.isdisjoint(wanted):
                results = self._run_ort_values(wanted, feeds)
            else:
                results = self._session.run(wanted, feeds)
        except ServerError:
            raise
        except Exception as exc:
            raise internal(
                f"onnxruntime execution failed for model '{self._view.name}': {exc}"
            ) from None
        timing.infer_end_ns = time.monotonic_ns()
        outputs = dict(zip(wanted, results, strict=True))
        for name, spec in self._output_reshape.items():
            if name in outputs:
                lead = (batch,) if self._view.max_batch_size > 0 else ()
                outputs[name] = outputs[name].reshape(lead + spec.dims)
        return split_outputs(requests, outputs, self._view.max_batch_size > 0)

    def _execute_text_requests(
        self, requests: Sequence[InferRequest], timing: Timing
    ) -> list[RequestOutputs]:
        """Fail only the requests whose string inputs are not UTF-8 and run the rest:
        onnxruntime's Python API passes str objects, never raw bytes, into string tensors
        (bytes objects become their repr, and neither OrtValues nor IO binding take strings)."""
        errors = {i: e for i, r in enumerate(requests) if (e := self._text_error(r)) is not None}
        rest = [r for i, r in enumerate(requests) if i not in errors]
        done = iter(self.execute(rest, timing) if rest else [])
        return [errors[i] if i in errors else next(done) for i in range(len(requests))]

    def _text_error(self, request: InferRequest) -> ServerError | None:
        for tensor in request.inputs:
            if tensor.name not in self._string_inputs or tensor.data.dtype != object:
                continue
            for index, item in enumerate(tensor.data.ravel()):
                if not isinstance(item, bytes):
                    continue
                try:
                    item.decode("utf-8")
                except UnicodeDecodeError as exc:
                    return invalid_arg(
                        f"input '{tensor.name}' of model '{self._view.name}': element {index} is "
                        f"not valid UTF-8 ({exc.reason} at byte {exc.start}); the onnxruntime "
                        "backend passes string tensors to onnxruntime as UTF-8 text"
                    )
        return None

    def _run_ort_values(self, wanted: list[str], feeds: dict[str, Any]) -> list[np.ndarray]:
        """A run whose outputs include BF16, which onnxruntime cannot hand back as numpy:
        every input goes in as an OrtValue and BF16 outputs are copied out as raw bits."""
        ort_value = _ort().OrtValue
        values = {}
        for name, feed in feeds.items():
            if isinstance(feed, ort_value):
                values[name] = feed
            elif feed.dtype == object:
                raise unsupported(
                    f"model '{self._view.name}' takes string input '{name}' and returns BF16; "
                    "onnxruntime's Python API cannot run that combination"
                )
            else:
                values[name] = ort_value.ortvalue_from_numpy(np.ascontiguousarray(feed))
        results = self._session.run_with_ort_values(wanted, values)
        return [
            _bf16_array(value, name) if name in self._bf16_outputs else value.numpy()
            for name, value in zip(wanted, results, strict=True)
        ]

    def _requested(self, requests: Sequence[InferRequest]) -> list[str]:
        names: list[str] = []
        for request in requests:
            if request.outputs is None:
                return self._output_names
            for output in request.outputs:
                if output.name not in names:
                    names.append(output.name)
        return names

    def unload(self) -> None:
        self._session = None


def _as_text(array: np.ndarray) -> np.ndarray:
    """BYTES as str objects, decoded strictly: anything else would change the bytes the
    model sees."""
    text = np.empty(array.shape, dtype=object)
    flat = text.reshape(-1)
    for index, item in enumerate(array.ravel()):
        flat[index] = item.decode("utf-8") if isinstance(item, bytes) else str(item)
    return text


def _bf16_value(array: np.ndarray) -> Any:
    """A BF16 tensor as an OrtValue over the same 16-bit patterns (numpy has no bfloat16 that
    onnxruntime recognises)."""
    bits = np.ascontiguousarray(array).view(np.uint16)
    return _ort().OrtValue.ortvalue_from_numpy_with_onnx_type(bits, _ONNX_BFLOAT16)


def _bf16_array(value: Any, name: str) -> np.ndarray:
    if value.device_name().lower() != "cpu":
        raise internal(f"onnxruntime returned BF16 output '{name}' on {value.device_name()}")
    array = np.empty(value.shape(), dtype=NUMPY_DTYPES["BF16"])
    if array.size:
        if value.tensor_size_in_bytes() != array.nbytes:
            raise internal(
                f"onnxruntime returned {value.tensor_size_in_bytes()} bytes for BF16 output '{name}'"
            )
        ctypes.memmove(array.ctypes.data, value.data_ptr(), array.nbytes)
    return array


def create_backend() -> Backend:
    return OnnxRuntimeBackend()
