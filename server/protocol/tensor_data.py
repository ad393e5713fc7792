"""Tensor contents as the HTTP front end reads and writes them, with Triton's checks and words.

JSON ``data`` is typed strictly, as Triton's RapidJSON accessors are: a boolean is not a number,
a float is not an integer, integers wrap to the tensor's width only after fitting 64 bits. A
wrong element or element count is an INTERNAL error in Triton (HTTP 500), which is kept here on
purpose. BYTES counts and length prefixes are checked with the messages Triton's core uses.
"""

from __future__ import annotations

import json
import math
import struct
from array import array as packed_array
from typing import Any, Literal

import numpy as np
import orjson
import simdjson

from server.errors import internal, invalid_arg
from server.tensors import BYTES, NUMPY_DTYPES, element_count

JSON_FORBIDDEN = ("FP16", "BF16")
_SIGNED = ("INT8", "INT16", "INT32", "INT64")
_UNSIGNED = ("UINT8", "UINT16", "UINT32", "UINT64")
_FLOATS = ("FP32", "FP64")
_LENGTH = struct.Struct("<I")
# Float outputs of up to this many values are written from a list (``json_values``).
_LIST_UP_TO = 64
_SHAPE_MISMATCH = "Unable to parse 'data': Shape does not match true shape of 'data' field"
# How simdjson reads a numeric array straight into a buffer, and the width it reads into.
_BUFFER_KIND: dict[str, tuple[Literal["d", "i", "u"], type[np.generic]]] = {
    **{t: ("d", np.float64) for t in _FLOATS},
    **{t: ("i", np.int64) for t in _SIGNED},
    **{t: ("u", np.uint64) for t in _UNSIGNED},
}


def json_tensor(data: Any, datatype: str, shape: tuple[int, ...]) -> np.ndarray:
    """``data`` of one JSON input as a flat-then-reshaped array; BYTES stays flat (its count is
    checked later, with the model's name in the message). ``data`` is a list, or a simdjson
    Array from ``json_errors.loads_infer`` whose numbers are read without a Python object each;
    an array that does not read as the datatype's numbers takes the list path and its errors.

    Triton walks the elements in order, and the first that is either past the shape's count
    or not of the datatype's kind decides the error."""
    if isinstance(data, simdjson.Array):
        array = _numbers(data, datatype)
        if array is None:
            data = data.as_list()
        else:
            return _shaped(array, shape)
    if not isinstance(data, list):
        raise internal("Unable to parse 'data': attempt to access JSON non-array as array")
    kinds = set(map(type, data))
    if list in kinds:
        data = _flatten(data)
        kinds = set(map(type, data))
    if datatype == BYTES:
        if kinds - {str}:
            raise internal(
                "Unable to parse JSON bytes array: attempt to access JSON non-string as string"
            )
        array = np.empty(len(data), dtype=object)
        array[:] = [item.encode("utf-8") for item in data]
        return array
    expected = element_count(shape) if shape else 0
    if len(data) > expected:
        head = data[:expected]
        _typed(head, set(map(type, head)), datatype)  # an error before the surplus comes first
        raise internal(_SHAPE_MISMATCH)
    return _shaped(_typed(data, kinds, datatype), shape)


def _shaped(array: np.ndarray, shape: tuple[int, ...]) -> np.ndarray:
    # Triton counts the elements of an empty shape as zero, not one.
    expected = element_count(shape) if shape else 0
    if array.size != expected:
        raise internal(_SHAPE_MISMATCH)
    return array.reshape(shape) if shape else array


def _numbers(data: simdjson.Array, datatype: str) -> np.ndarray | None:
    """The (nested) array's numbers as the datatype, or None when an element is not a number
    of the kind the datatype reads (a boolean, a string, a float for an integer type) or
    does not fit 64 bits; the list path then words the error."""
    kind = _BUFFER_KIND.get(datatype)
    if kind is None:
        return None
    try:
        buffer = data.as_buffer(of_type=kind[0])
    except (TypeError, ValueError):
        return None
    with np.errstate(over="ignore"):
        return np.frombuffer(buffer, dtype=kind[1]).astype(NUMPY_DTYPES[datatype])


def _typed(data: list[Any], kinds: set[type], datatype: str) -> np.ndarray:
    if datatype == "BOOL":
        if kinds - {bool}:
            raise internal("Unable to parse 'data': attempt to access JSON non-boolean as boolean")
        return np.array(data, dtype=np.bool_)
    if datatype in _FLOATS:
        if kinds - {int, float}:
            raise internal("Unable to parse 'data': attempt to access JSON non-number as double")
        try:
            if datatype == "FP32":
                # Each number as a double cast to float, as Triton reads it: a double past
                # float32's range becomes infinity, where numpy's cast would also warn.
                return np.frombuffer(packed_array("f", data), dtype=np.float32)
            return np.array(data, dtype=np.float64)
        except OverflowError:
            raise internal(
                "Unable to parse 'data': attempt to access JSON non-number as double"
            ) from None
    wide, words = (
        (np.int64, "signed-integer") if datatype in _SIGNED else (np.uint64, "unsigned-integer")
    )
    if kinds - {int}:
        raise internal(f"Unable to parse 'data': attempt to access JSON non-{words} as {words}")
    try:
        values = np.array(data, dtype=wide)
    except OverflowError:
        raise internal(
            f"Unable to parse 'data': attempt to access JSON non-{words} as {words}"
        ) from None
    return values.astype(NUMPY_DTYPES[datatype])


def _flatten(data: list[Any]) -> list[Any]:
    out: list[Any] = []
    stack = [iter(data)]
    while stack:
        for item in stack[-1]:
            if isinstance(item, list):
                stack.append(iter(item))
                break
            out.append(item)
        else:
            stack.pop()
    return out


def json_values(array: np.ndarray, datatype: str) -> Any:
    """An output's flat JSON ``data``. FP32 is written through double precision, as Triton does,
    and non-finite values as RapidJSON writes them (NaN, Infinity, -Infinity)."""
    if datatype in JSON_FORBIDDEN:
        raise invalid_arg(
            f"sending {datatype} data via JSON is not supported. Please use the binary data format for output"
        )
    flat = array.reshape(-1)
    if datatype == BYTES:
        return [
            item.decode("utf-8", errors="replace") if isinstance(item, bytes) else str(item)
            for item in flat
        ]
    if flat.dtype.kind == "f":
        values: list[float] | np.ndarray
        if flat.size <= _LIST_UP_TO:
            # Few values: as Python floats (doubles), summed by the interpreter, cost less
            # than numpy's cast and reduction, which pay off on larger outputs.
            values = flat.tolist()
            total = sum(values)
        else:
            values = flat.astype(np.float64)
            total = float(np.add.reduce(values))
        # A sum is finite only when every element is; an overflowing sum of finite values
        # just takes the slower, equally correct path.
        if not math.isfinite(total):
            listed = values if isinstance(values, list) else values.tolist()
            return orjson.Fragment(json.dumps(listed, separators=(",", ":")))
        return values
    if not flat.flags.c_contiguous or flat.dtype.byteorder == ">":
        flat = np.ascontiguousarray(flat, dtype=flat.dtype.newbyteorder("="))
    return flat
