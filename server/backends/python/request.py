"""``InferenceRequest`` (both the requests a model receives and the ones it sends to other
models) and the response sender of decoupled models."""

from __future__ import annotations

import json
import threading
from collections.abc import Callable, Collection, Sequence
from typing import Any

import numpy as np

from server.backends.python.messages import (
    InferenceResponse,
    TritonModelException,
    parameters_json,
    to_server_error,
)
from server.backends.python.tensor import Tensor, as_bytes_array
from server.errors import ServerError, internal
from server.repository.view import ModelView
from server.stats import ErrorResponse
from server.tensors import model_input, settled
from server.types import InferRequest, InferResponse, ModelOutputs

TRITONSERVER_RESPONSE_COMPLETE_FINAL = 1
TRITONSERVER_REQUEST_FLAG_SEQUENCE_START = 1
TRITONSERVER_REQUEST_FLAG_SEQUENCE_END = 2
TRITONSERVER_REQUEST_RELEASE_ALL = 1
TRITONSERVER_REQUEST_RELEASE_RESCHEDULE = 2

# Parameters the server itself consumes; Triton does not hand them to the model.
_RESERVED = frozenset(
    {
        "sequence_id",
        "sequence_start",
        "sequence_end",
        "priority",
        "timeout",
        "binary_data_output",
        "headers",
    }
)

# A finished decoupled response (or error) for the stream, or None for the final flag.
StreamItem = InferResponse | ServerError | None
Converter = Callable[[InferenceResponse, bool], InferResponse | ServerError]


class InferenceResponseSender:
    """``request.get_response_sender()``: ``send(response=None, flags=0)`` from any thread."""

    def __init__(self, request: InferRequest, decoupled: bool, convert: Converter) -> None:
        self._request = request
        self._decoupled = decoupled
        self._convert = convert
        self._lock = threading.Lock()
        self._closed = False
        self.captured: InferenceResponse | None = None

    def send(self, response: InferenceResponse | None = None, flags: int = 0) -> None:
        final = bool(flags & TRITONSERVER_RESPONSE_COMPLETE_FINAL)
        if response is not None and not isinstance(response, InferenceResponse):
            raise TritonModelException(
                f"send() takes a pb_utils.InferenceResponse, got {type(response).__name__}"
            )
        if response is None and not final:
            raise TritonModelException(
                "Inference Response object must be provided when the response flags is not set "
                "to TRITONSERVER_RESPONSE_COMPLETE_FINAL."
            )
        with self._lock:
            if self._closed:
                raise TritonModelException(
                    "Unable to send response. Response sender has been closed."
                )
            if not self._decoupled:
                if response is None or not final:
                    raise TritonModelException(
                        "a model that is not decoupled sends exactly one response per request, "
                        "with the flag TRITONSERVER_RESPONSE_COMPLETE_FINAL"
                    )
                self.captured = response
                self._closed = True
                return
            items: list[StreamItem] = []
            if response is not None:
                items.append(self._convert(response, final))
            if final:
                items.append(None)
                self._closed = True
            self._deliver(items)

    def is_cancelled(self) -> bool:
        return self._request.cancelled

    @property
    def closed(self) -> bool:
        return self._closed

    def fail(self, error: ServerError) -> bool:
        """End the stream with ``error`` unless the model already closed it; True when
        the error went out."""
        with self._lock:
            if self._closed:
                return False
            self._closed = True
            self._deliver([error, None])
            return True

    def _deliver(self, items: list[StreamItem]) -> None:
        queue = self._request.response_queue
        future = self._request.future
        if queue is None or future is None:
            return
        try:
            future.get_loop().call_soon_threadsafe(_put_all, queue, items)
        except RuntimeError:  # the loop is closed: the server is gone
            pass


def _unconverted(response: InferenceResponse, final: bool) -> InferResponse | ServerError:
    raise AssertionError("a sender that is not decoupled converts no response")


# Guards the making of a request's sender on demand, which a model may ask for from threads.
_SENDER_MADE = threading.Lock()


def _put_all(queue: Any, items: list[StreamItem]) -> None:
    for item in items:
        queue.put_nowait(item)


class InferenceTrace:
    """A request's trace as a model holds it: ``request.trace()``, to pass on as ``trace=``."""

    def get_context(self) -> str | None:
        return None


class InferenceRequest:
    """Requests a model receives in ``execute``, and BLS requests it builds itself:
    ``InferenceRequest(model_name=..., inputs=[...], requested_output_names=[...]).exec()``."""

    def __init__(
        self,
        request_id: str = "",
        correlation_id: int | str = 0,
        inputs: Sequence[Tensor] = (),
        requested_output_names: Sequence[str] = (),
        model_name: str = "",
        model_version: int = -1,
        flags: int = 0,
        timeout: int = 0,
        preferred_memory: Any = None,
        trace: Any = None,
        parameters: Any = None,
    ) -> None:
        for tensor in inputs:
            if not isinstance(tensor, Tensor):
                raise TritonModelException(
                    f"inputs must hold pb_utils.Tensor objects, got {type(tensor).__name__}"
                )
        self._id = str(request_id)
        self._correlation_id = correlation_id
        self._inputs = list(inputs)
        self._requested: Sequence[str] = [str(n) for n in requested_output_names]
        self._model_name = str(model_name)
        self._model_version = int(model_version)
        self._flags = int(flags)
        self._timeout = int(timeout)
        self._parameters: str | None = parameters_json(parameters)
        self._source: InferRequest | None = None
        self._sender: InferenceResponseSender | None = None

    @classmethod
    def incoming(
        cls,
        source: InferRequest,
        view: ModelView,
        sender: InferenceResponseSender | None,
        owners: dict[int, object],
    ) -> InferenceRequest:
        """The request as ``execute`` receives it; the owners of its inputs' memory are
        added to ``owners``."""
        request = cls.__new__(cls)
        request._id = source.id
        params = source.parameters
        if params:
            request._correlation_id = params.get("sequence_id", 0)
            request._flags = (
                TRITONSERVER_REQUEST_FLAG_SEQUENCE_START * bool(params.get("sequence_start"))
            ) | (TRITONSERVER_REQUEST_FLAG_SEQUENCE_END * bool(params.get("sequence_end")))
        else:
            request._correlation_id = 0
            request._flags = 0
        inputs = []
        for tensor in source.inputs:
            # Models may change their inputs in place (``x /= 255``), as under Triton, whose
            # inputs are the stub's own copies.
            data, owner = model_input(tensor.data)
            owners[id(owner)] = owner
            inputs.append(Tensor._wrap(tensor.name, data, tensor.datatype))
        request._inputs = inputs
        # ``requested_output_names`` hands out a copy: the view's names can be shared.
        if source.outputs is None:
            request._requested = view.output_names
        else:
            request._requested = [o.name for o in source.outputs]
        request._model_name = view.name
        request._model_version = view.version_number
        request._timeout = source.timeout_us
        # Written out when the model asks for it; most models never do.
        request._parameters = None
        request._source = source
        request._sender = sender
        return request

    # --- what a model reads -------------------------------------------------------
    def inputs(self) -> list[Tensor]:
        return list(self._inputs)

    def requested_output_names(self) -> list[str]:
        return list(self._requested)

    def request_id(self) -> str:
        return self._id

    def correlation_id(self) -> int | str:
        return self._correlation_id

    def flags(self) -> int:
        return self._flags

    def set_flags(self, flags: int) -> None:
        """The sequence flags of a request this model sends (BLS)."""
        self._flags = int(flags)

    def trace(self) -> InferenceTrace:
        """The request's trace, for a BLS request to carry on (``trace=``); tracing is not
        enabled here, so it carries nothing."""
        return InferenceTrace()

    def timeout(self) -> int:
        return self._timeout

    def parameters(self) -> str:
        if self._parameters is None:
            params = (self._source.parameters if self._source is not None else None) or {}
            self._parameters = json.dumps(
                {k: v for k, v in params.items() if k not in _RESERVED}, default=str
            )
        return self._parameters

    def model_name(self) -> str:
        return self._model_name

    def model_version(self) -> int:
        return self._model_version

    def get_response_sender(self) -> InferenceResponseSender:
        if self._sender is None:
            if self._source is None:
                raise TritonModelException(
                    "only requests given to execute() have a response sender"
                )
            with _SENDER_MADE:
                if self._sender is None:
                    # Not decoupled (a decoupled model's requests come with theirs): the
                    # sender only keeps the one response, so it converts nothing.
                    self._sender = InferenceResponseSender(self._source, False, _unconverted)
        return self._sender

    def sent_response(self) -> InferenceResponse | None:
        """The response a model that is not decoupled sent through the sender, if any."""
        return self._sender.captured if self._sender is not None else None

    def is_cancelled(self) -> bool:
        return bool(self._source is not None and self._source.cancelled)

    def set_release_flags(self, flags: int) -> None:
        if flags & TRITONSERVER_REQUEST_RELEASE_RESCHEDULE:
            raise TritonModelException("request rescheduling is not supported by this server")

    # --- business logic scripting ------------------------------------------------------
    def exec(self, decoupled: bool = False) -> Any:
        from server.backends.python import bls

        return bls.execute(self, decoupled)

    def async_exec(self, decoupled: bool = False) -> Any:
        from server.backends.python import bls

        return bls.execute_async(self, decoupled)


def get_input_tensor_by_name(request: InferenceRequest, name: str) -> Tensor | None:
    # Read in place rather than through the copy ``inputs()`` makes: models call this once
    # per input of every request.
    for tensor in request._inputs:
        if tensor._name == name:
            return tensor
    return None


def response_outputs(
    response: Any, view: ModelView, inputs: Collection[int] = ()
) -> dict[str, np.ndarray] | ServerError:
    """A model's response as the outputs the core encodes, or that request's error;
    ``inputs`` are the owners of the inputs the model was given (``settled``)."""
    if not isinstance(response, InferenceResponse):
        return internal(
            f"model '{view.name}' returned {type(response).__name__} where a "
            "pb_utils.InferenceResponse was expected"
        )
    # Read through the slots, not the accessors' copies: this runs for every response.
    error = response._error
    if error is not None:
        # The model answered: the request counts as executed, as in Triton's statistics.
        return ErrorResponse.of(to_server_error(error))
    # Outputs keep the datatype the model produced, as Triton sends them, even where the
    # config declares another; only numpy text arrays become BYTES objects.
    outputs = ModelOutputs()
    parameters = response._parameters
    if parameters not in ("", "{}"):
        outputs.parameters = json.loads(parameters)
    for tensor in response._tensors:
        array = tensor._array
        if tensor._datatype == "BYTES" and array.dtype.kind in "SU":
            array = as_bytes_array(array)
        else:
            array = settled(array, inputs)
        outputs[tensor._name] = array
    return outputs
