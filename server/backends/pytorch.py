"""PyTorch backend: TorchScript ``model.pt`` files, loaded with ``torch.jit.load``.

torch is an optional dependency, imported only when a model needs it: without it such a
model is UNAVAILABLE with the reason, and every other model is served as usual.

Tensors are matched to the model as Triton's PyTorch backend does. Inputs go by the names of
``forward``'s arguments when the configuration uses them, else by the ``<name>__<index>``
convention, else in configuration order. Outputs go by ``<name>__<index>`` (the index into
the tuple ``forward`` returns), by key when ``forward`` returns a dict, else in configuration
order.
"""

from __future__ import annotations

import logging
import re
import threading
import time
import warnings
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from server.backends.base import Backend, InstanceSpec, ModelInstance, RequestOutputs, Timing
from server.backends.batching import gather_inputs, split_outputs
from server.backends.cpus import limited_cpus
from server.errors import internal, invalid_arg, unavailable, unsupported
from server.repository.view import ModelView
from server.tensors import NUMPY_DTYPES, settled, writable
from server.types import InferRequest

_INDEXED = re.compile(r"^.+__(\d+)$")
# torch warns, once, that a read-only array makes a tensor it must not write; the inputs this
# module hands torch that way are only read, by the upload to the device.
warnings.filterwarnings(
    "ignore", message="The given NumPy array is not writable", category=UserWarning, module=__name__
)
_import_lock = threading.Lock()
log = logging.getLogger(__name__)

# torch's thread counts are the process's, not a model's: as in Triton's PyTorch backend, the
# first model that gives a parameter sets it, and a different value from a later model is
# ignored with a warning.
_THREAD_PARAMETERS = {
    "INTRA_OP_THREAD_COUNT": "set_num_threads",
    "INTER_OP_THREAD_COUNT": "set_num_interop_threads",
}
# Parameter -> (the count in force, the model that set it).
_threads_set: dict[str, tuple[int, str]] = {}
_threads_lock = threading.Lock()


def apply_thread_counts(torch: Any, model: str, parameters: dict[str, str]) -> None:
    """Apply a model's ``INTRA_OP_THREAD_COUNT`` and ``INTER_OP_THREAD_COUNT`` parameters
    (positive integers; 0 or less leaves torch's default). While no model has set the
    intra-op count, a process limited by its cgroup's CPU quota gets at most that many intra-op
    threads: torch keeps to the process's CPU set, but not to the quota."""
    _apply_parameters(torch, model, parameters)
    limit = limited_cpus()
    with _threads_lock:
        if limit is not None and "INTRA_OP_THREAD_COUNT" not in _threads_set:
            if torch.get_num_threads() > limit:
                torch.set_num_threads(limit)
                log.info("torch's intra-op threads: %d, the CPUs this process may use", limit)


def _apply_parameters(torch: Any, model: str, parameters: dict[str, str]) -> None:
    for key, setter in _THREAD_PARAMETERS.items():
        text = parameters.get(key)
        if text is None:
            continue
        try:
            count = int(text)
        except ValueError:
            raise invalid_arg(
                f"parameter '{key}' of model '{model}' must be an integer, got '{text}'"
            ) from None
        if count <= 0:
            continue
        with _threads_lock:
            if key in _threads_set:
                in_force, by = _threads_set[key]
                if in_force != count:
                    log.warning(
                        "%s of model '%s' (%d) is ignored: torch's count is the process's, "
                        "set to %d by model '%s'",
                        key,
                        model,
                        count,
                        in_force,
                        by,
                    )
                continue
            try:
                getattr(torch, setter)(count)
            except RuntimeError as exc:  # inter-op threads, once torch's pool has started
                log.warning("%s of model '%s' (%d) cannot be applied: %s", key, model, count, exc)
                continue
            _threads_set[key] = (count, model)
        log.info("%s is %d, set by model '%s'", key, count, model)


def import_torch(model: str) -> Any:
    """torch, or UNAVAILABLE naming the model and the missing package."""
    with _import_lock:
        try:
            import torch
        except ImportError as exc:
            raise unavailable(
                f"model '{model}' needs the PyTorch backend, but torch cannot be imported ({exc}); "
                "install it with: pip install 'triton-compatible-server[torch]'"
            ) from None
    return torch


def _indexed(names: Sequence[str]) -> list[int] | None:
    """The indices of ``<name>__<index>`` names, or None unless every name follows it."""
    indices = []
    for name in names:
        match = _INDEXED.match(name)
        if match is None:
            return None
        indices.append(int(match.group(1)))
    return indices


def _forward_arguments(module: Any) -> list[str]:
    try:
        schema = module.forward.schema
    except (AttributeError, RuntimeError):
        return []
    return [a.name for a in schema.arguments if a.name != "self"]


def input_binding(module: Any, names: Sequence[str], model: str) -> tuple[str, list[str]]:
    """("keyword", names) to pass inputs by argument name, or ("position", names in forward's
    argument order)."""
    arguments = _forward_arguments(module)
    if names and set(names) <= set(arguments):
        return "keyword", list(names)
    indices = _indexed(names)
    if indices is not None:
        if sorted(indices) != list(range(len(names))):
            raise unavailable(
                f"the inputs of model '{model}' follow the <name>__<index> convention, but "
                f"their indices {sorted(indices)} are not 0..{len(names) - 1}"
            )
        return "position", [name for _, name in sorted(zip(indices, names, strict=True))]
    return "position", list(names)


class PyTorchBackend(Backend):
    name = "pytorch"

    def gpu_unusable_reason(self) -> str | None:
        try:
            torch = import_torch("")
        except Exception:
            return None  # the load itself says that torch is missing
        if not torch.cuda.is_available():
            return f"this torch ({torch.__version__}) cannot use CUDA"
        return None

    def load(
        self, config: Any, view: ModelView, version_dir: Path, instance: InstanceSpec
    ) -> ModelInstance:
        torch = import_torch(config.name)
        apply_thread_counts(torch, config.name, view.parameters)
        path = self.model_file(config, version_dir)
        if not path.is_file():
            raise unavailable(f"unable to find '{path}' for model '{config.name}'")
        for spec in list(view.inputs.values()) + list(view.outputs.values()):
            if spec.datatype == "BYTES":
                raise unsupported(
                    f"tensor '{spec.name}' of model '{config.name}' has datatype {spec.datatype}, "
                    "which this server's PyTorch backend does not carry"
                )
        if instance.kind == "GPU":
            if not torch.cuda.is_available() or instance.device_id >= torch.cuda.device_count():
                raise unavailable(
                    f"instance '{instance.name}' of model '{config.name}' needs CUDA device "
                    f"{instance.device_id}, which torch cannot use"
                )
            device = torch.device("cuda", instance.device_id)
        else:
            device = torch.device("cpu")
        try:
            module = torch.jit.load(str(path), map_location=device)
            module.eval()
        except Exception as exc:
            raise unavailable(f"failed to load model '{config.name}': {exc}") from None
        binding = input_binding(module, list(view.inputs), config.name)
        params = view.parameters
        inference_mode = params.get("INFERENCE_MODE", "true").lower() != "false"
        return PyTorchInstance(torch, module, device, view, binding, inference_mode)


class PyTorchInstance(ModelInstance):
    def __init__(
        self,
        torch: Any,
        module: Any,
        device: Any,
        view: ModelView,
        binding: tuple[str, list[str]],
        inference_mode: bool,
    ) -> None:
        self._torch = torch
        self._module = module
        self._device = device
        self._view = view
        self._mode, self._input_names = binding
        self._inference_mode = inference_mode
        names = list(view.outputs)
        self._output_indices = _indexed(names) or list(range(len(names)))
        self._output_names = names

    def execute(self, requests: Sequence[InferRequest], timing: Timing) -> list[RequestOutputs]:
        torch = self._torch
        feeds = gather_inputs(requests, self._input_names)
        missing = [n for n in self._input_names if n not in feeds]
        if missing:
            raise internal(f"model '{self._view.name}' needs input(s) {', '.join(missing)}")
        tensors = {n: self._tensor(feeds[n], n).to(self._device) for n in self._input_names}
        timing.input_end_ns = time.monotonic_ns()
        guard = torch.inference_mode() if self._inference_mode else torch.no_grad()
        try:
            with guard:
                if self._mode == "keyword":
                    result = self._module(**tensors)
                else:
                    result = self._module(*(tensors[n] for n in self._input_names))
        except Exception as exc:
            raise internal(
                f"PyTorch execute failure for model '{self._view.name}': {exc}"
            ) from None
        timing.infer_end_ns = time.monotonic_ns()
        outputs = self._collect(result)
        return split_outputs(requests, outputs, self._view.max_batch_size > 0)

    def _tensor(self, array: Any, name: str) -> Any:
        data = np.asarray(array)
        if self._device.type == "cpu":
            # A request's own tensors may be read-only views of the bytes it arrived in, which
            # a module changing its inputs in place must not write to: such a module gets a
            # copy. On a device the upload is the module's own copy, and the host array is
            # only read.
            data = writable(data)
        if self._view.inputs[name].datatype == "BF16":
            return self._torch.from_numpy(data.view(np.int16)).view(self._torch.bfloat16)
        return self._torch.from_numpy(data)

    def _download(self, value: Any) -> np.ndarray:
        # Into page-locked memory from torch's pool, which the copy fills at the bus's speed,
        # where a pageable buffer is filled through a staging copy; it goes back to the pool
        # when the answer no longer needs it.
        host = self._torch.empty(value.shape, dtype=value.dtype, pin_memory=True)
        host.copy_(value)
        return host.numpy()

    def _collect(self, result: Any) -> dict[str, np.ndarray]:
        torch = self._torch
        if isinstance(result, dict):
            produced = {name: result[name] for name in self._output_names if name in result}
        else:
            items = list(result) if isinstance(result, (tuple, list)) else [result]
            produced = {}
            for name, index in zip(self._output_names, self._output_indices, strict=True):
                if index >= len(items):
                    raise internal(
                        f"model '{self._view.name}' returned {len(items)} output(s), but output "
                        f"'{name}' expects index {index}"
                    )
                produced[name] = items[index]
        outputs: dict[str, np.ndarray] = {}
        for name, value in produced.items():
            if not isinstance(value, torch.Tensor):
                raise internal(
                    f"output '{name}' of model '{self._view.name}' is {type(value).__name__}, "
                    "not a tensor"
                )
            datatype = self._view.outputs[name].datatype
            bf16 = datatype == "BF16"
            fresh = False
            if bf16:
                # numpy has no bfloat16 of its own: the answer carries the raw 16-bit values.
                fresh = value.dtype != torch.bfloat16
                value = value.to(torch.bfloat16).view(torch.int16)
                wanted = np.dtype(np.int16)
            else:
                wanted = NUMPY_DTYPES[datatype]
            on_host = value.device.type == "cpu"
            array = value.detach().numpy() if on_host else self._download(value)
            if array.dtype != wanted:
                array = array.astype(wanted)
            elif on_host and not fresh:
                # A host tensor may be the module's own state, changed in place by the next
                # call while this answer is being encoded (``settled``); the download, .to()
                # and astype have already copied the others.
                array = settled(array)
            outputs[name] = array.view(NUMPY_DTYPES["BF16"]) if bf16 else array
        return outputs

    def unload(self) -> None:
        self._module = None


def create_backend() -> Backend:
    return PyTorchBackend()
