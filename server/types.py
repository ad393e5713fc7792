"""Protocol-neutral request and response types, shared by both front ends and the core."""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import numpy as np

if TYPE_CHECKING:
    from server.errors import ServerError

Parameters = dict[str, Any]


@dataclass(slots=True)
class InferInput:
    name: str
    datatype: str
    shape: tuple[int, ...]
    data: np.ndarray
    parameters: Parameters = field(default_factory=dict)
    # What was wrong with the tensor's contents (a byte size, a BYTES element count or
    # length prefix), which Triton's core reports only when it reaches this input among
    # the checks of every input's datatype and shape (``validate_request``); ``data`` is
    # then empty.
    content_error: ServerError | None = None


@dataclass(slots=True)
class RequestedOutput:
    name: str
    parameters: Parameters = field(default_factory=dict)

    @property
    def classification(self) -> int:
        return int(self.parameters.get("classification", 0) or 0)


@dataclass(slots=True)
class OutputTensor:
    name: str
    datatype: str
    shape: tuple[int, ...]
    data: np.ndarray
    parameters: Parameters = field(default_factory=dict)


class ModelOutputs(dict[str, np.ndarray]):
    """A model's outputs by name, with the parameters it set on its response (a Python
    model's ``InferenceResponse(..., parameters=...)``), which the response carries."""

    # Set on the instance where the model set any; this shared default is never changed.
    parameters: Parameters = {}  # noqa: RUF012


@dataclass(slots=True)
class InferResponse:
    model_name: str
    model_version: str
    outputs: list[OutputTensor]
    id: str = ""
    parameters: Parameters = field(default_factory=dict)
    final: bool = True


@dataclass(slots=True, eq=False)
class InferRequest:
    """One inference request as the core sees it.

    The scheduler fills the timestamps (``time.monotonic_ns``) that the statistics
    extension and the metrics are computed from.
    """

    model_name: str
    model_version: str = ""
    inputs: list[InferInput] = field(default_factory=list)
    outputs: list[RequestedOutput] | None = None
    id: str = ""
    parameters: Parameters = field(default_factory=dict)
    # Filled by validation.
    batch_size: int = 0
    priority: int = 0
    timeout_us: int = 0
    # Filled by the scheduler.
    future: asyncio.Future[InferResponse] | None = None
    request_start_ns: int = 0
    queue_start_ns: int = 0
    compute_start_ns: int = 0
    deadline_ns: int = 0
    # Set when the client went away; the scheduler skips such requests.
    cancelled: bool = False
    # A decoupled model's responses go here instead of the future (streaming front ends).
    response_queue: asyncio.Queue[InferResponse | BaseException | None] | None = None

    def input_map(self) -> dict[str, np.ndarray]:
        return {tensor.name: tensor.data for tensor in self.inputs}
