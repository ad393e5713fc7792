"""Concatenate request inputs into one batch and slice outputs back, for tensor backends."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from server.backends.base import RequestOutputs
from server.errors import internal
from server.types import InferRequest


def gather_inputs(requests: Sequence[InferRequest], names: Sequence[str]) -> dict[str, np.ndarray]:
    """One array per input: the request's own array for a batch of one, else one concatenate."""
    if len(requests) == 1:
        return requests[0].input_map()
    maps = [r.input_map() for r in requests]
    return {name: np.concatenate([m[name] for m in maps]) for name in names if name in maps[0]}


def split_outputs(
    requests: Sequence[InferRequest], outputs: dict[str, np.ndarray], batched: bool
) -> list[RequestOutputs]:
    """Slice each output along the batch dim by the requests' batch sizes (views, no copies)."""
    if len(requests) == 1:
        return [outputs]
    if not batched:
        raise internal("a model without batching executed more than one request")
    sizes = [r.batch_size for r in requests]
    total = sum(sizes)
    results: list[RequestOutputs] = [{} for _ in requests]
    for name, array in outputs.items():
        if array.ndim == 0 or array.shape[0] != total:
            raise internal(
                f"output '{name}' has batch dim {array.shape[0] if array.ndim else 0}, "
                f"expected {total}"
            )
        start = 0
        for index, size in enumerate(sizes):
            entry = results[index]
            assert isinstance(entry, dict)
            entry[name] = array[start : start + size]
            start += size
    return results
