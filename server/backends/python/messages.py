"""Errors and responses of the Python-backend model API, and their mapping to the server's."""

from __future__ import annotations

import json
from collections.abc import Sequence
from typing import Any

from server.backends.python.tensor import Tensor
from server.errors import Code, ServerError


class TritonModelException(Exception):
    """Raised by the API when a model uses it wrongly; models may raise it too."""


class TritonError:
    """An error a model attaches to a response: ``TritonError(message, code)``."""

    UNKNOWN = 0
    INTERNAL = 1
    NOT_FOUND = 2
    INVALID_ARG = 3
    UNAVAILABLE = 4
    UNSUPPORTED = 5
    ALREADY_EXISTS = 6
    CANCELLED = 7

    __slots__ = ("_message", "_code")

    def __init__(self, message: str, code: int = INTERNAL) -> None:
        self._message = str(message)
        self._code = int(code)

    def message(self) -> str:
        return self._message

    def code(self) -> int:
        return self._code

    def __repr__(self) -> str:
        return f"TritonError({self._message!r}, code={self._code})"

    def __str__(self) -> str:
        return self._message


_TO_CODE = {
    TritonError.UNKNOWN: Code.UNKNOWN,
    TritonError.INTERNAL: Code.INTERNAL,
    TritonError.NOT_FOUND: Code.NOT_FOUND,
    TritonError.INVALID_ARG: Code.INVALID_ARG,
    TritonError.UNAVAILABLE: Code.UNAVAILABLE,
    TritonError.UNSUPPORTED: Code.UNSUPPORTED,
    TritonError.ALREADY_EXISTS: Code.ALREADY_EXISTS,
    TritonError.CANCELLED: Code.CANCELLED,
}
_FROM_CODE = {code: number for number, code in _TO_CODE.items()}


def to_server_error(error: Any) -> ServerError:
    if isinstance(error, TritonError):
        return ServerError(_TO_CODE.get(error.code(), Code.INTERNAL), error.message())
    return ServerError(Code.INTERNAL, str(error))


def from_server_error(error: ServerError) -> TritonError:
    return TritonError(error.message, _FROM_CODE.get(error.code, TritonError.INTERNAL))


def parameters_json(parameters: Any) -> str:
    """Request and response parameters travel as a JSON object string, as Triton hands them."""
    if parameters is None:
        return "{}"
    if isinstance(parameters, str):
        decoded = json.loads(parameters) if parameters else {}
        if not isinstance(decoded, dict):
            raise TritonModelException("parameters must be a JSON object")
        return json.dumps(decoded)
    if isinstance(parameters, dict):
        for key, value in parameters.items():
            if not isinstance(key, str) or not isinstance(value, (bool, int, str)):
                raise TritonModelException(
                    "parameters keys must be strings and values must be bool, int or str"
                )
        return json.dumps(parameters)
    raise TritonModelException("parameters must be a dict or a JSON string")


class InferenceResponse:
    """``InferenceResponse(output_tensors, error=None, parameters=None)``."""

    __slots__ = ("_tensors", "_error", "_parameters")

    def __init__(
        self,
        output_tensors: Sequence[Tensor] | None = None,
        error: TritonError | None = None,
        parameters: Any = None,
    ) -> None:
        tensors = list(output_tensors or [])
        for tensor in tensors:
            if not isinstance(tensor, Tensor):
                raise TritonModelException(
                    f"output_tensors must hold pb_utils.Tensor objects, got {type(tensor).__name__}"
                )
        if error is not None and not isinstance(error, TritonError):
            error = TritonError(str(error))
        self._tensors = tensors
        self._error = error
        self._parameters = parameters_json(parameters)

    def output_tensors(self) -> list[Tensor]:
        return list(self._tensors)

    def has_error(self) -> bool:
        return self._error is not None

    def error(self) -> TritonError | None:
        return self._error

    def parameters(self) -> str:
        return self._parameters

    def __repr__(self) -> str:
        if self._error is not None:
            return f"InferenceResponse(error={self._error!r})"
        return f"InferenceResponse(output_tensors={self._tensors!r})"


def get_output_tensor_by_name(response: InferenceResponse, name: str) -> Tensor | None:
    for tensor in response.output_tensors():
        if tensor.name() == name:
            return tensor
    return None
