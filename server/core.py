"""The one service both front ends call. Front ends decode into ``InferRequest`` and
encode what comes back; lookup, validation, scheduling and statistics live here."""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import AsyncIterator, Coroutine
from dataclasses import dataclass
from typing import Any

import numpy as np

from server import __version__, collector
from server.errors import Code, ServerError, internal, invalid_arg, unavailable
from server.repository.config import config_to_json_dict, parse_config_json
from server.repository.manager import LoadedVersion, ModelManager
from server.repository.view import ModelView, TensorSpec
from server.scheduler.base import failure_reason
from server.shm import SharedMemoryRegistry, uses_shared_memory
from server.stats import ErrorResponse
from server.tensors import NUMPY_DTYPES, wire_datatype_of
from server.types import InferRequest, InferResponse, OutputTensor
from server.validation import validate_request

log = logging.getLogger(__name__)

# The core serving this process, once ``Core.activate`` ran on its event loop. Backends that
# call back into the core from executor threads (the Python backend's BLS) find it here.
current: Core | None = None

EXTENSIONS = [
    "classification",
    "model_repository",
    "model_repository(unload_dependents)",
    "schedule_policy",
    "model_configuration",
    "system_shared_memory",
    "cuda_shared_memory",
    "binary_tensor_data",
    "parameters",
    "statistics",
    "trace",
    "logging",
]


@dataclass
class CoreOptions:
    server_id: str = "triton"
    strict_readiness: bool = True
    model_control_mode: str = "none"
    allow_client_shm: bool = False


class Core:
    def __init__(self, manager: ModelManager, options: CoreOptions) -> None:
        self.manager = manager
        self.options = options
        self.exiting = False
        self.accepting = True
        self.started = False
        self.loop: asyncio.AbstractEventLoop | None = None
        # Client shared memory is shared by both front ends; off unless --allow-client-shm.
        self.shm = SharedMemoryRegistry(options.allow_client_shm)

    def activate(self) -> None:
        """Record the running event loop and make this the process's current core."""
        global current
        self.loop = asyncio.get_running_loop()
        current = self

    # --- health and metadata ---------------------------------------------------------
    def live(self) -> bool:
        return self.started and not self.exiting

    def ready(self) -> bool:
        if not self.started or self.exiting:
            return False
        if not self.options.strict_readiness:
            return True
        return self.manager.all_ready()

    def server_metadata(self) -> dict[str, Any]:
        return {"name": self.options.server_id, "version": __version__, "extensions": EXTENSIONS}

    def model_ready(self, name: str, version: str = "") -> bool:
        if name not in self.manager.models:
            raise ServerError(Code.NOT_FOUND, f"Request for unknown model: '{name}' is not found")
        try:
            self.manager.get(name, version)
        except ServerError:
            return False
        return True

    def model_metadata(self, name: str, version: str = "") -> dict[str, Any]:
        loaded = self.manager.get(name, version)
        view = _view(loaded)
        entry = self.manager.models[name]
        if version:
            versions = [str(loaded.version)]
        else:
            versions = [str(v) for v, lv in sorted(entry.versions.items()) if lv.state == "READY"]
        return {
            "name": name,
            "versions": versions,
            "platform": view.platform or view.backend,
            "inputs": [
                {"name": s.name, "datatype": s.datatype, "shape": view.metadata_shape(s)}
                for s in view.inputs.values()
            ],
            "outputs": [
                {"name": s.name, "datatype": s.datatype, "shape": view.metadata_shape(s)}
                for s in view.outputs.values()
            ],
        }

    def model_view(self, name: str, version: str = "") -> ModelView:
        """The frozen view of the version a request would be served by (NOT_FOUND/UNAVAILABLE
        as for inference); the HTTP front end deduces raw binary requests from it."""
        return _view(self.manager.get(name, version))

    def model_config(self, name: str, version: str = "") -> dict[str, Any]:
        return config_to_json_dict(self.manager.get(name, version).config)

    def model_config_message(self, name: str, version: str = "") -> Any:
        return self.manager.get(name, version).config

    # --- inference -------------------------------------------------------------------
    def infer(self, request: InferRequest) -> Coroutine[Any, Any, InferResponse]:
        """The inference of ``request``, to await. Without shared memory it is ``_infer``
        itself rather than a coroutine around it: one frame fewer on the hot path."""
        if uses_shared_memory(request):
            return self._infer_shared(request)
        return self._infer(request)

    async def _infer_shared(self, request: InferRequest) -> InferResponse:
        with self.shm.acquire(request) as lease:
            response = await self._infer(request)
            lease.write_outputs(response)
            return response

    async def _infer(self, request: InferRequest) -> InferResponse:
        if not request.request_start_ns:
            request.request_start_ns = time.monotonic_ns()
        if self.exiting and not self.accepting:
            raise unavailable("Server exiting")
        loaded = self.manager.get(request.model_name, request.model_version)
        view = _view(loaded)
        scheduler = loaded.scheduler
        stats = loaded.stats
        if scheduler is None or stats is None:
            raise unavailable(
                f"Request for unknown model: '{request.model_name}' version {loaded.version} is not at ready state"
            )
        validate_request(request, view)
        try:
            outputs = await scheduler.submit(request)
            response = self._build_response(request, view, outputs)
        except ErrorResponse:
            # The model answered with an error: executed, so a success to the statistics.
            stats.record_success(request.request_start_ns, time.monotonic_ns())
            raise
        except ServerError as exc:
            stats.record_failure(request.request_start_ns, time.monotonic_ns(), failure_reason(exc))
            raise
        except asyncio.CancelledError:
            stats.record_failure(request.request_start_ns, time.monotonic_ns(), "CANCELED")
            raise
        stats.record_success(request.request_start_ns, time.monotonic_ns())
        return response

    async def infer_stream(
        self, request: InferRequest
    ) -> AsyncIterator[InferResponse | ServerError]:
        """Every response of one request as it is produced: exactly one for ordinary models,
        any number for decoupled ones. Errors after the first response arrive in-band as
        ServerError items; an error before any response is raised."""
        loaded = self.manager.get(request.model_name, request.model_version)
        view = _view(loaded)
        if not view.decoupled:
            yield await self.infer(request)
            return
        if not request.request_start_ns:
            request.request_start_ns = time.monotonic_ns()
        if self.exiting and not self.accepting:
            raise unavailable("Server exiting")
        scheduler, stats = loaded.scheduler, loaded.stats
        if scheduler is None or stats is None:
            raise unavailable(
                f"Request for unknown model: '{request.model_name}' version {loaded.version} is not at ready state"
            )
        queue: asyncio.Queue[InferResponse | BaseException | None] = asyncio.Queue()
        request.response_queue = queue
        lease = self.shm.acquire(request) if uses_shared_memory(request) else None
        try:
            validate_request(request, view)
        except ServerError:
            if lease is not None:
                lease.release()
            raise
        execution = asyncio.ensure_future(scheduler.submit(request))
        # The first error that failed the request in-band (error responses a model sends
        # do not: Triton counts such a request as a success).
        failure: ServerError | None = None
        first = True
        completed = False
        try:
            while True:
                item = await queue.get()
                if item is None:  # the final flag
                    completed = True
                    break
                if first:
                    first = False
                    stats.record_first_response(request.request_start_ns, time.monotonic_ns())
                if isinstance(item, BaseException) and not isinstance(item, ServerError):
                    item = ServerError(Code.INTERNAL, str(item))
                if isinstance(item, ServerError):
                    if not isinstance(item, ErrorResponse):
                        failure = failure or item
                    yield item
                    continue
                if lease is not None:
                    try:
                        lease.write_outputs(item)
                    except ServerError as exc:
                        failure = failure or exc
                        yield exc
                        continue
                yield item
            try:
                await execution
            except ServerError:
                # An execution that failed after its stream carried the error is counted
                # once, below; one that failed silently fails the stream here.
                if failure is None:
                    raise
        except ServerError as exc:
            stats.record_failure(request.request_start_ns, time.monotonic_ns(), failure_reason(exc))
            raise
        finally:
            # A consumer that stops before the final flag has gone away: a model still
            # answering from its own threads sees it through is_cancelled().
            if not completed:
                request.cancelled = True
            if not execution.done():
                execution.cancel()
            if lease is not None:
                lease.release()
        if failure is not None:
            stats.record_failure(
                request.request_start_ns, time.monotonic_ns(), failure_reason(failure)
            )
        else:
            stats.record_success(request.request_start_ns, time.monotonic_ns())

    def build_response(
        self, request: InferRequest, view: ModelView, outputs: dict[str, Any]
    ) -> InferResponse:
        """Public for backends that produce responses themselves (decoupled models)."""
        return self._build_response(request, view, outputs)

    def _build_response(
        self, request: InferRequest, view: ModelView, outputs: dict[str, Any]
    ) -> InferResponse:
        tensors: list[OutputTensor] = []
        wanted: list[tuple[str, dict[str, Any]]]
        if request.outputs is None:
            wanted = [(name, {}) for name in view.outputs if name in outputs]
        else:
            wanted = [(o.name, o.parameters) for o in request.outputs]
        for name, params in wanted:
            array = outputs.get(name)
            if array is None:
                # As Triton: a requested output the model did not produce is left out.
                continue
            array = np.asarray(array)
            spec = view.outputs.get(name)
            classes = int(params.get("classification", 0) or 0) if params else 0
            if classes:
                array = classify(
                    array, classes, spec.labels if spec else (), view.max_batch_size > 0
                )
                datatype = "BYTES"
            else:
                datatype = _output_datatype(array, spec, name, view.name)
            tensors.append(
                OutputTensor(
                    name, datatype, tuple(array.shape), array, dict(params) if params else {}
                )
            )
        parameters = getattr(outputs, "parameters", None)
        return InferResponse(
            request.model_name, view.version, tensors, request.id, dict(parameters or ())
        )

    # --- statistics and repository -------------------------------------------------
    def statistics(self, name: str = "", version: str = "") -> dict[str, Any]:
        if not name:
            stats = [v.stats.as_dict() for v in self.manager.ready_versions() if v.stats]
            return {"model_stats": sorted(stats, key=lambda s: (s["name"], s["version"]))}
        try:
            self.manager.get(name)
        except ServerError:
            raise invalid_arg(f"requested model '{name}' is not available") from None
        try:
            if version:
                selected = [self.manager.get(name, version)]
            else:
                selected = [
                    v for v in self.manager.models[name].versions.values() if v.state == "READY"
                ]
        except ServerError:
            raise invalid_arg(
                f"requested model version is not available for model '{name}'"
            ) from None
        return {
            "model_stats": [
                v.stats.as_dict() for v in sorted(selected, key=lambda v: v.version) if v.stats
            ]
        }

    def repository_index(self, ready_only: bool = False) -> list[dict[str, str]]:
        self.manager.scan()
        return self.manager.index(ready_only)

    async def load_model(self, name: str, parameters: dict[str, Any]) -> None:
        if self.options.model_control_mode != "explicit":
            raise unavailable("explicit model load / unload is not allowed if polling is enabled")
        override = None
        files: dict[str, bytes] = {}
        for key, value in parameters.items():
            if key == "config":
                if not isinstance(value, str):
                    raise internal("attempt to access JSON non-string as string")
                try:
                    override = parse_config_json(value)
                except ServerError as exc:
                    log.error("failed to load '%s': %s", name, exc.message)
                    raise internal(
                        f"failed to load '{name}', failed to poll from model repository"
                    ) from None
            elif key.startswith("file:"):
                files[key[len("file:") :]] = value if isinstance(value, bytes) else _b64(value, key)
        if files and override is None:
            raise internal(f"failed to load '{name}', failed to poll from model repository")
        try:
            await self.manager.load(name, override, files or None)
        finally:
            collector.settle()

    async def unload_model(self, name: str, parameters: dict[str, Any]) -> None:
        if self.options.model_control_mode != "explicit":
            raise unavailable("explicit model load / unload is not allowed if polling is enabled")
        try:
            await self.manager.unload(name)
        finally:
            collector.settle()


def _output_datatype(array: np.ndarray, spec: TensorSpec | None, name: str, model: str) -> str:
    """The configured datatype, unless the backend produced another one: Triton answers with
    the type a Python model actually returned (FP64 for an output declared FP32)."""
    if spec is not None and array.dtype == NUMPY_DTYPES[spec.datatype]:
        return spec.datatype
    try:
        return wire_datatype_of(array)
    except ServerError:
        raise internal(
            f"output '{name}' of model '{model}' has numpy datatype {array.dtype}, which no "
            "wire datatype carries"
        ) from None


def _view(loaded: LoadedVersion) -> ModelView:
    assert loaded.view is not None
    return loaded.view


def _b64(value: Any, key: str) -> bytes:
    import base64
    import binascii

    try:
        return base64.b64decode(str(value), validate=True)
    except (binascii.Error, ValueError):
        raise invalid_arg(f"failed to decode base64 content of '{key}'") from None


def classify(array: np.ndarray, count: int, labels: tuple[str, ...], batched: bool) -> np.ndarray:
    """Triton's classification extension: the top ``count`` entries as "value:index[:label]"."""
    datatype = wire_datatype_of(array)
    if datatype in ("BOOL", "BYTES"):
        raise invalid_arg(
            f"class result not available for output due to unsupported type '{datatype}'"
        )
    rows = array.reshape(array.shape[0], -1) if batched else array.reshape(1, -1)
    k = min(count, rows.shape[1])
    result = np.empty((rows.shape[0], k), dtype=object)
    is_float = rows.dtype.kind == "f"
    for r, row in enumerate(rows):
        order = np.argsort(-row.astype(np.float64), kind="stable")[:k]
        for c, index in enumerate(order):
            value = f"{float(row[index]):f}" if is_float else str(int(row[index]))
            text = f"{value}:{index}"
            if index < len(labels):
                text += f":{labels[index]}"
            result[r, c] = text.encode()
    return result if batched else result.reshape(k)
