"""Business logic scripting: a model's ``InferenceRequest.exec()`` / ``async_exec()`` runs
another model of this server through the core, its scheduler and batcher included.

Model code runs in executor threads; the core lives on the server's event loop. Each call
is handed to that loop with ``run_coroutine_threadsafe`` and the calling thread waits for it,
so the loop itself never blocks.
"""

from __future__ import annotations

import asyncio
import json
import queue
from collections.abc import Coroutine, Iterator
from typing import TYPE_CHECKING, Any

import numpy as np

from server.backends.python import imports
from server.backends.python.messages import (
    InferenceResponse,
    TritonModelException,
    from_server_error,
)
from server.backends.python.tensor import Tensor
from server.errors import ServerError
from server.tensors import writable
from server.types import InferInput, InferRequest, InferResponse, RequestedOutput

if TYPE_CHECKING:
    from server.backends.python.request import InferenceRequest
    from server.core import Core

_END = object()


def _target() -> tuple[Core, asyncio.AbstractEventLoop]:
    from server import core as core_module

    core = core_module.current
    loop = core.loop if core is not None else None
    if core is None or loop is None or loop.is_closed():
        raise TritonModelException("BLS requests need a running server")
    try:
        running = asyncio.get_running_loop()
    except RuntimeError:
        running = None
    if running is loop:
        raise TritonModelException("BLS requests cannot be made from the server's event loop")
    return core, loop


def to_server_request(request: InferenceRequest) -> InferRequest:
    if not request.model_name():
        raise TritonModelException("a BLS request needs a model_name")
    inputs = []
    for tensor in request.inputs():
        # The called model reads the caller's memory through a read-only view: one that
        # may write in its inputs is given a copy (``writable``), so that neither side's
        # changes reach the other, as with Triton's copies through shared memory.
        array = tensor.as_numpy().view()
        array.flags.writeable = False
        inputs.append(InferInput(tensor.name(), tensor.datatype(), tuple(array.shape), array))
    names = request.requested_output_names()
    version = request.model_version()
    return InferRequest(
        model_name=request.model_name(),
        model_version=str(version) if version >= 0 else "",
        inputs=inputs,
        outputs=[RequestedOutput(n) for n in names] if names else None,
        id=request.request_id(),
        parameters=json.loads(request.parameters()),
        timeout_us=request.timeout(),
    )


def to_model_response(response: InferResponse) -> InferenceResponse:
    tensors = [
        Tensor._wrap(o.name, writable(np.asarray(o.data)), o.datatype) for o in response.outputs
    ]
    converted = InferenceResponse(tensors)
    if response.parameters:
        converted._parameters = json.dumps(response.parameters, default=str)
    return converted


def _error_response(error: ServerError) -> InferenceResponse:
    return InferenceResponse(error=from_server_error(error))


async def _unary(core: Core, request: InferRequest) -> InferenceResponse:
    try:
        return to_model_response(await core.infer(request))
    except ServerError as exc:
        return _error_response(exc)


async def _stream(core: Core, request: InferRequest, sink: Any) -> None:
    """Put each response into ``sink``, then an empty final response unless the last one
    already carried the final flag, then the end marker."""
    final_seen = False
    try:
        async for item in core.infer_stream(request):
            if isinstance(item, ServerError):
                sink(_error_response(item))
                final_seen = False
            else:
                sink(to_model_response(item))
                final_seen = item.final
        if not final_seen:
            sink(InferenceResponse())
    except ServerError as exc:
        sink(_error_response(exc))
    finally:
        sink(_END)


def execute(request: InferenceRequest, decoupled: bool) -> Any:
    core, loop = _target()
    server_request = to_server_request(request)
    if not decoupled:
        return asyncio.run_coroutine_threadsafe(_unary(core, server_request), loop).result()
    items: queue.SimpleQueue[Any] = queue.SimpleQueue()
    asyncio.run_coroutine_threadsafe(_stream(core, server_request, items.put), loop)
    return _drain(items)


def _drain(items: queue.SimpleQueue[Any]) -> Iterator[InferenceResponse]:
    while True:
        item = items.get()
        if item is _END:
            return
        yield item


def execute_async(request: InferenceRequest, decoupled: bool) -> Any:
    """Start the request now; the returned awaitable resolves on the caller's own loop."""
    core, loop = _target()
    server_request = to_server_request(request)
    work: Coroutine[Any, Any, Any] = (
        _collect(core, server_request) if decoupled else _unary(core, server_request)
    )
    future = asyncio.run_coroutine_threadsafe(work, loop)

    async def wait() -> Any:
        return await asyncio.wrap_future(future)

    return wait()


async def _collect(core: Core, request: InferRequest) -> Iterator[InferenceResponse]:
    responses: list[Any] = []
    await _stream(core, request, responses.append)
    return iter([r for r in responses if r is not _END])


# --- the model loading API --------------------------------------------------------------
def get_model_dir() -> str:
    """The version folder of the model whose code calls it."""
    owner = imports.calling_model()
    if owner is None:
        raise TritonModelException("get_model_dir() is for a model's own code")
    return owner.folders[0]


def is_model_ready(model_name: str, model_version: str = "") -> bool:
    core, _ = _target()
    try:
        return core.model_ready(model_name, str(model_version))
    except ServerError:
        return False  # a model the repository does not have


def load_model(model_name: str, config: str = "", files: Any = None) -> None:
    """Load (or reload) a model, as the repository API's load with ``config`` and
    ``files`` (``{"file:<version>/<name>": bytes}``) does; explicit model control only."""
    core, loop = _target()
    parameters: dict[str, Any] = dict(files or {})
    if config:
        parameters["config"] = config
    _control("load", core.load_model(model_name, parameters), loop)


def unload_model(model_name: str, unload_dependents: bool = False) -> None:
    core, loop = _target()
    parameters = {"unload_dependents": bool(unload_dependents)}
    _control("unload", core.unload_model(model_name, parameters), loop)


def _control(verb: str, work: Any, loop: asyncio.AbstractEventLoop) -> None:
    try:
        asyncio.run_coroutine_threadsafe(work, loop).result()
    except ServerError as exc:
        owner = imports.calling_model()
        instance = owner.instance if owner is not None else ""
        raise TritonModelException(
            f"Failed to {verb} model: Failed to process the request for model '{instance}', "
            f"message: {exc.message}"
        ) from None
