"""Datatypes and tensor byte layouts shared by every codec and backend.

Wire datatypes are Triton's strings ("FP32", "BYTES", ...). Numeric tensors are numpy arrays
with explicit little-endian dtypes; BYTES tensors are object arrays of ``bytes``. The binary
layout of BYTES is Triton's: each element a 4-byte little-endian length, then the bytes.
"""

from __future__ import annotations

import mmap
import struct
from collections.abc import Callable, Collection, Sequence
from typing import Any

import numpy as np

from server.errors import ServerError, invalid_arg
from server.types import InferInput

try:  # BF16 has no numpy dtype of its own; ml_dtypes gives one when installed.
    from ml_dtypes import bfloat16 as _bfloat16

    _BF16_DTYPE = np.dtype(_bfloat16)
except ImportError:  # pragma: no cover - depends on the environment
    _BF16_DTYPE = np.dtype("<u2")

BYTES = "BYTES"
_LENGTH = struct.Struct("<I")

NUMPY_DTYPES: dict[str, np.dtype] = {
    "BOOL": np.dtype(np.bool_),
    "UINT8": np.dtype("u1"),
    "UINT16": np.dtype("<u2"),
    "UINT32": np.dtype("<u4"),
    "UINT64": np.dtype("<u8"),
    "INT8": np.dtype("i1"),
    "INT16": np.dtype("<i2"),
    "INT32": np.dtype("<i4"),
    "INT64": np.dtype("<i8"),
    "FP16": np.dtype("<f2"),
    "FP32": np.dtype("<f4"),
    "FP64": np.dtype("<f8"),
    "BF16": _BF16_DTYPE,
    "BYTES": np.dtype(object),
}

ELEMENT_SIZE: dict[str, int] = {
    name: dtype.itemsize for name, dtype in NUMPY_DTYPES.items() if name != BYTES
}

# config.pbtxt DataType enum names <-> wire datatypes.
CONFIG_TO_WIRE: dict[str, str] = {
    "TYPE_BOOL": "BOOL",
    "TYPE_UINT8": "UINT8",
    "TYPE_UINT16": "UINT16",
    "TYPE_UINT32": "UINT32",
    "TYPE_UINT64": "UINT64",
    "TYPE_INT8": "INT8",
    "TYPE_INT16": "INT16",
    "TYPE_INT32": "INT32",
    "TYPE_INT64": "INT64",
    "TYPE_FP16": "FP16",
    "TYPE_FP32": "FP32",
    "TYPE_FP64": "FP64",
    "TYPE_STRING": "BYTES",
    "TYPE_BF16": "BF16",
}
WIRE_TO_CONFIG: dict[str, str] = {wire: cfg for cfg, wire in CONFIG_TO_WIRE.items()}

_NUMPY_KIND_TO_WIRE: dict[tuple[str, int], str] = {
    ("b", 1): "BOOL",
    ("u", 1): "UINT8",
    ("u", 2): "UINT16",
    ("u", 4): "UINT32",
    ("u", 8): "UINT64",
    ("i", 1): "INT8",
    ("i", 2): "INT16",
    ("i", 4): "INT32",
    ("i", 8): "INT64",
    ("f", 2): "FP16",
    ("f", 4): "FP32",
    ("f", 8): "FP64",
}


def wire_datatype_of(array: np.ndarray) -> str:
    """The wire datatype that carries ``array`` (object, str and bytes arrays are BYTES)."""
    dtype = array.dtype
    known = _WIRE_OF_DTYPE.get(dtype)
    if known is not None:
        return known
    datatype = _wire_datatype(dtype)
    # Text dtypes differ by length (``<U5``, ``S12``): kept out, they would crowd the rest.
    if len(_WIRE_OF_DTYPE) < 64 and dtype.kind not in ("S", "U"):
        _WIRE_OF_DTYPE[dtype] = datatype
    return datatype


# numpy's dtype.name is computed in Python on every access; the answer per dtype never changes.
_WIRE_OF_DTYPE: dict[np.dtype, str] = {}


def _wire_datatype(dtype: np.dtype) -> str:
    if dtype.name == "bfloat16":
        return "BF16"
    if dtype.kind in ("O", "S", "U"):
        return BYTES
    try:
        return _NUMPY_KIND_TO_WIRE[(dtype.kind, dtype.itemsize)]
    except KeyError:
        raise invalid_arg(f"unsupported numpy datatype {dtype}") from None


def element_count(shape: Sequence[int]) -> int:
    count = 1
    for dim in shape:
        count *= dim
    return count


def serialize_bytes(array: np.ndarray) -> bytes:
    """Flatten a BYTES tensor into Triton's length-prefixed layout."""
    parts: list[bytes] = []
    pack = struct.Struct("<I").pack
    for item in array.ravel(order="C"):
        if isinstance(item, str):
            item = item.encode("utf-8")
        elif not isinstance(item, (bytes, bytearray, memoryview)):
            item = str(item).encode("utf-8")
        parts.append(pack(len(item)))
        parts.append(bytes(item))
    return b"".join(parts)


def request_prefix(request_id: str) -> str:
    """How Triton's core opens a message about one request."""
    return f"[request id: {request_id or '<id_unknown>'}] "


def check_bytes_count(
    array: np.ndarray, shape: Sequence[int], name: str, model: str, request_id: str = ""
) -> np.ndarray:
    """A flat BYTES array with exactly the elements ``shape`` holds, reshaped to it."""
    expected = element_count(shape)
    got = len(array)
    if got < expected:
        raise invalid_arg(
            f"{request_prefix(request_id)}expected {expected} string elements for inference "
            f"input '{name}' for model '{model}', got {got}"
        )
    if got > expected:
        raise _surplus_string(expected, name, model, request_id)
    return array.reshape(shape)


def _surplus_string(expected: int, name: str, model: str, request_id: str) -> Exception:
    # Triton stops at the first element past the count, so it always names that one.
    return invalid_arg(
        f"{request_prefix(request_id)}unexpected number of string elements {expected + 1} for "
        f"inference input '{name}' for model '{model}', expecting {expected}"
    )


def deserialize_bytes(
    buffer: bytes | memoryview,
    shape: Sequence[int],
    name: str,
    model: str,
    request_id: str = "",
) -> np.ndarray:
    """Parse length-prefixed elements with Triton's checks, in Triton's order: the buffer
    is walked until an element past the shape's count (refused at once), then a short
    count is judged, and only a right count reports a length prefix that claims more bytes
    than remain."""
    expected = element_count(shape)
    view = memoryview(buffer)
    total = len(view)
    items: list[bytes] = []
    offset = 0
    overrun: tuple[int, int] | None = None
    unpack = _LENGTH.unpack_from
    while offset < total:
        remaining = total - offset
        if remaining < 4:
            raise invalid_arg(
                f"{request_prefix(request_id)}incomplete string length indicator for inference "
                f"input '{name}' for model '{model}', expecting 4 bytes but only {remaining} "
                "bytes available. Please make sure the string length indicator is in one buffer."
            )
        (length,) = unpack(view, offset)
        offset += 4
        if len(items) == expected:
            raise _surplus_string(expected, name, model, request_id)
        if length > total - offset:
            overrun = (length, total - offset)
            items.append(b"")
            break
        items.append(bytes(view[offset : offset + length]))
        offset += length
    array = np.empty(len(items), dtype=object)
    array[:] = items
    array = check_bytes_count(array, shape, name, model, request_id)
    if overrun is not None:
        raise invalid_arg(
            f"incomplete string data for inference input '{name}', expecting string of length "
            f"{overrun[0]} but only {overrun[1]} bytes available"
        )
    return array


def from_buffer(
    buffer: bytes | memoryview,
    datatype: str,
    shape: Sequence[int],
    name: str,
    model: str = "",
    request_id: str = "",
) -> np.ndarray:
    """Build a tensor from raw little-endian bytes, checking the byte size exactly; messages
    name the model and the request as Triton's core does."""
    if datatype == BYTES:
        return deserialize_bytes(buffer, shape, name, model, request_id)
    dtype = NUMPY_DTYPES.get(datatype)
    if dtype is None:
        raise invalid_arg(f"invalid datatype '{datatype}' for input '{name}'")
    expected = element_count(shape) * dtype.itemsize
    if len(buffer) != expected:
        raise byte_size_mismatch(name, model, request_id, expected, len(buffer))
    return np.frombuffer(buffer, dtype=dtype).reshape(shape)


def byte_size_mismatch(
    name: str, model: str, request_id: str, expected: int, got: int
) -> ServerError:
    return invalid_arg(
        f"{request_prefix(request_id)}input byte size mismatch for input '{name}' for model "
        f"'{model}'. Expected {expected}, got {got}"
    )


def check_new_input(names: set[str], name: str, request_id: str) -> None:
    """Triton adds each input to the request as soon as its name, datatype and shape are
    read, and refuses a name already there (``names``, which this adds to) before it looks
    at anything else of it."""
    if name in names:
        raise invalid_arg(f"{request_prefix(request_id)}input '{name}' already exists in request")
    names.add(name)


def deferred_contents(
    name: str,
    datatype: str,
    shape: tuple[int, ...],
    parameters: dict[str, Any],
    read: Callable[..., np.ndarray],
    *args: Any,
) -> InferInput:
    """An input whose contents ``read(*args)`` builds; a content error it raises is kept on
    the input (``InferInput.content_error``) for validation to report in Triton's order."""
    try:
        data = read(*args)
    except ServerError as exc:
        return InferInput(name, datatype, shape, _NO_DATA, parameters, exc)
    return InferInput(name, datatype, shape, data, parameters)


_NO_DATA = np.empty(0)


def writable(array: np.ndarray) -> np.ndarray:
    """What a model that changes its inputs in place may be given (``model_input``)."""
    return model_input(array)[0]


def model_input(array: np.ndarray) -> tuple[np.ndarray, object]:
    """What a model that changes its inputs in place may be given, and the object owning
    its memory: ``array`` itself where it is the request's own writable memory, otherwise
    a copy: of read-only memory (the bytes a request arrived in) and of a shared-memory
    region (the client's, which its next requests may read again; Triton's models work on
    copies of it too)."""
    if array.flags.writeable:
        owner = owner_of(array)
        if not isinstance(owner, mmap.mmap):
            return array, owner
    copy = array.copy()
    return copy, copy


def owner_of(array: np.ndarray) -> object:
    """The object whose memory ``array`` is a view of (``array`` itself when it owns it)."""
    owner: object = array
    while isinstance(owner, np.ndarray) and owner.base is not None:
        owner = owner.base
    while isinstance(owner, memoryview):
        owner = owner.obj
    return owner


def settled(array: np.ndarray, inputs: Collection[int] = ()) -> np.ndarray:
    """A model's output in a form the model can no longer change.

    An answer is encoded after the model has handed it over (``execute`` returned, or a
    decoupled model's ``send``), while the model may already be running its next
    execution: a model that writes every result into one buffer it keeps would change the
    answers still on their way. As Triton, which copies outputs out of the model at that
    point, the answer takes a copy, unless the memory belongs to an immutable ``bytes``
    object, or is one of the requests' own inputs (``inputs``, the ids of their owners),
    as when a model passes an input through.
    """
    if id(array) in inputs:  # an input the model was given, passed through as it is
        return array
    owner = owner_of(array)
    if type(owner) is bytes or id(owner) in inputs:
        return array
    return array.copy()


def to_bytes(array: np.ndarray, datatype: str) -> bytes | memoryview:
    """The raw wire bytes of a tensor (a zero-copy view where the layout allows)."""
    if datatype == BYTES:
        return serialize_bytes(array)
    dtype = NUMPY_DTYPES[datatype]
    if array.dtype != dtype:
        array = array.astype(dtype)
    if not array.size:
        return b""
    array = np.ascontiguousarray(array)
    try:
        return array.data.cast("B")
    except ValueError:  # a dtype the buffer protocol cannot describe (ml_dtypes' bfloat16)
        return array.reshape(-1).view(np.uint8).data


def byte_size(array: np.ndarray, datatype: str) -> int:
    if datatype == BYTES:
        return sum(
            4 + len(item if isinstance(item, bytes) else str(item).encode())
            for item in array.ravel()
        )
    return array.size * ELEMENT_SIZE[datatype]
