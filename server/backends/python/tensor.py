"""``Tensor`` and the datatype helpers of the Python-backend model API.

Model code sees tensors as numpy arrays; BYTES tensors are object arrays of ``bytes``, the
way models written for Triton expect them.
"""

from __future__ import annotations

import ctypes
from collections.abc import Sequence
from typing import Any

import numpy as np

from server.tensors import CONFIG_TO_WIRE, NUMPY_DTYPES, wire_datatype_of

# Integer codes of TRITONSERVER_DataType, which models compare against.
_TYPE_CODES: dict[str, int] = {
    "BOOL": 1,
    "UINT8": 2,
    "UINT16": 3,
    "UINT32": 4,
    "UINT64": 5,
    "INT8": 6,
    "INT16": 7,
    "INT32": 8,
    "INT64": 9,
    "FP16": 10,
    "FP32": 11,
    "FP64": 12,
    "BYTES": 13,
    "BF16": 14,
}
_CODE_TO_WIRE = {code: wire for wire, code in _TYPE_CODES.items()}


# A configuration data type's numpy type, as Triton's module names them (a model may read
# this dict directly).
TRITON_STRING_TO_NUMPY: dict[str, type] = {
    "TYPE_BOOL": bool,
    "TYPE_UINT8": np.uint8,
    "TYPE_UINT16": np.uint16,
    "TYPE_UINT32": np.uint32,
    "TYPE_UINT64": np.uint64,
    "TYPE_INT8": np.int8,
    "TYPE_INT16": np.int16,
    "TYPE_INT32": np.int32,
    "TYPE_INT64": np.int64,
    "TYPE_FP16": np.float16,
    "TYPE_FP32": np.float32,
    "TYPE_FP64": np.float64,
    "TYPE_STRING": np.object_,
}


def triton_string_to_numpy(triton_type_string: str) -> type:
    """``"TYPE_FP32"`` -> ``np.float32``; ``"TYPE_STRING"`` -> ``np.object_``."""
    known = TRITON_STRING_TO_NUMPY.get(triton_type_string)
    if known is not None:
        return known
    wire = CONFIG_TO_WIRE.get(triton_type_string)
    if wire is None:
        raise ValueError(f"unknown model configuration data type '{triton_type_string}'")
    return NUMPY_DTYPES[wire].type


def triton_to_numpy_type(data_type: int) -> type | None:
    wire = _CODE_TO_WIRE.get(int(data_type))
    return NUMPY_DTYPES[wire].type if wire is not None else None


def numpy_to_triton_type(data_type: Any) -> int | None:
    try:
        dtype = np.dtype(data_type)
    except TypeError:
        return None
    if dtype.kind in "OSU":
        return _TYPE_CODES["BYTES"]
    try:
        return _TYPE_CODES[wire_datatype_of(np.empty(0, dtype))]
    except Exception:
        return None


def as_bytes_array(array: np.ndarray) -> np.ndarray:
    """Any string-like array as an object array of ``bytes``, the form BYTES tensors take."""
    if array.dtype == np.object_ and all(isinstance(x, bytes) for x in array.flat):
        return array
    out = np.empty(array.shape, dtype=np.object_)
    for index, item in np.ndenumerate(array):
        if isinstance(item, bytes):
            out[index] = item
        elif isinstance(item, str):
            out[index] = item.encode("utf-8")
        elif isinstance(item, np.bytes_):
            out[index] = bytes(item)
        else:
            out[index] = str(item).encode("utf-8")
    return out


def serialize_byte_tensor(input_tensor: np.ndarray) -> np.ndarray:
    """Pack a BYTES tensor into its flat wire layout (4-byte little-endian length + bytes)."""
    if input_tensor.size == 0:
        return np.empty([0], dtype=np.object_)
    parts: list[bytes] = []
    for item in as_bytes_array(np.asarray(input_tensor)).flat:
        parts.append(len(item).to_bytes(4, "little"))
        parts.append(item)
    packed = np.empty([1], dtype=np.object_)
    packed[0] = b"".join(parts)
    return packed


def deserialize_bytes_tensor(encoded_tensor: bytes) -> np.ndarray:
    """Unpack the wire layout back into an object array of ``bytes``."""
    data = bytes(encoded_tensor)
    items: list[bytes] = []
    offset = 0
    while offset < len(data):
        length = int.from_bytes(data[offset : offset + 4], "little")
        offset += 4
        items.append(data[offset : offset + length])
        offset += length
    out = np.empty([len(items)], dtype=np.object_)
    out[:] = items
    return out


class Tensor:
    """A named tensor. ``Tensor(name, numpy_array)`` as models build them."""

    __slots__ = ("_name", "_array", "_datatype")

    def __init__(self, name: str, data: Any) -> None:
        if not isinstance(name, str):
            raise TypeError("Tensor name must be a string")
        array = data if isinstance(data, np.ndarray) else np.asarray(data)
        datatype = wire_datatype_of(array)  # BYTES for object, bytes and str arrays
        if datatype == "BYTES":
            array = as_bytes_array(array)
        self._name = name
        self._array = array
        self._datatype = datatype

    @classmethod
    def _wrap(cls, name: str, array: np.ndarray, datatype: str) -> Tensor:
        """A tensor around an array the server already decoded, without re-checking it."""
        tensor = cls.__new__(cls)
        tensor._name = name
        tensor._array = array
        tensor._datatype = datatype
        return tensor

    def name(self) -> str:
        return self._name

    def as_numpy(self) -> np.ndarray:
        return self._array

    def shape(self) -> list[int]:
        return list(self._array.shape)

    def triton_dtype(self) -> int:
        return _TYPE_CODES.get(self._datatype, 0)

    def datatype(self) -> str:
        return self._datatype

    def is_cpu(self) -> bool:
        return True

    def to_dlpack(self) -> Any:
        if self._datatype == "BYTES":
            raise ValueError("DLPack does not carry BYTES tensors")
        if self._datatype == "BF16":
            # numpy has no bfloat16 for DLPack to describe; torch does.
            torch = _torch("a BF16 tensor goes through DLPack")
            bits = torch.from_numpy(_writable(self._array).view(np.int16))
            return torch.utils.dlpack.to_dlpack(bits.view(torch.bfloat16))
        return _writable(self._array).__dlpack__()

    def __dlpack__(self, stream: Any = None) -> Any:
        return self.to_dlpack()

    def __dlpack_device__(self) -> tuple[int, int]:
        return (1, 0)  # kDLCPU, device 0

    @staticmethod
    def from_dlpack(name: str, source: Any) -> Tensor:
        """From any object that speaks DLPack (torch, cupy, numpy), or a raw capsule such as
        ``torch.utils.dlpack.to_dlpack`` makes. Tensors in device memory are copied to the
        host, as are BF16 ones, which numpy cannot read: every backend path here reads
        numpy."""
        if hasattr(source, "__dlpack__"):
            device = getattr(source, "__dlpack_device__", lambda: (_DL_CPU, 0))()[0]
            capsule = _export(source) if device in _DL_HOST else None
        else:
            capsule = source
        if capsule is not None:
            device, code, bits = capsule_info(capsule)
            if device in _DL_HOST and (code, bits) != (_DL_BFLOAT, 16):
                return Tensor(name, np.from_dlpack(_CapsuleHolder(capsule)))
        # Torch is handed the object itself where there is one, to agree on the export.
        array, datatype = to_host(source)
        return Tensor._wrap(name, array, datatype)

    def __repr__(self) -> str:
        return f"Tensor(name={self._name!r}, datatype={self._datatype}, shape={self.shape()})"


def _writable(array: np.ndarray) -> np.ndarray:
    # numpy refuses to export read-only arrays through DLPack; decoded inputs are read-only.
    return array if array.flags.writeable else array.copy()


class _CapsuleHolder:
    """Lets ``np.from_dlpack`` take a bare PyCapsule, which only has the old protocol."""

    def __init__(self, capsule: Any) -> None:
        self._capsule = capsule

    def __dlpack__(self, stream: Any = None, **_: Any) -> Any:
        return self._capsule

    def __dlpack_device__(self) -> tuple[int, int]:
        return (_DL_CPU, 0)


# DLPack's device types whose memory numpy reads in place: the CPU, CUDA's pinned host memory
# and ROCm's.
_DL_CPU = 1
_DL_HOST = frozenset({_DL_CPU, 3, 11})
_DL_BFLOAT = 4  # DLDataTypeCode kDLBfloat
# Where the DLDevice sits in the structure a capsule points to: after the data pointer of a
# DLManagedTensor ("dltensor"), and after the version, context, deleter and flags of a
# DLManagedTensorVersioned ("dltensor_versioned"). The data type's code and bits follow the
# device (8 bytes) and the dimension count (4).
_DEVICE_OFFSET = {b"dltensor": 8, b"dltensor_versioned": 40}
_DTYPE_AFTER_DEVICE = 12

_capsule_name = ctypes.PYFUNCTYPE(ctypes.c_char_p, ctypes.py_object)(
    ("PyCapsule_GetName", ctypes.pythonapi)
)
_capsule_pointer = ctypes.PYFUNCTYPE(ctypes.c_void_p, ctypes.py_object, ctypes.c_char_p)(
    ("PyCapsule_GetPointer", ctypes.pythonapi)
)


def capsule_info(capsule: Any) -> tuple[int, int, int]:
    """The DLPack device type, data type code and bits of the tensor a capsule holds, read
    without consuming it."""
    if type(capsule).__name__ != "PyCapsule":
        raise TypeError(
            f"from_dlpack needs a DLPack capsule or tensor, not {type(capsule).__name__}"
        )
    kind = _capsule_name(capsule)
    if kind not in _DEVICE_OFFSET:
        raise ValueError(f"the capsule holds no DLPack tensor it can give (its name is {kind!r})")
    device = _capsule_pointer(capsule, kind) + _DEVICE_OFFSET[kind]
    dtype = device + _DTYPE_AFTER_DEVICE
    return (
        ctypes.c_int32.from_address(device).value,
        ctypes.c_uint8.from_address(dtype).value,
        ctypes.c_uint8.from_address(dtype + 1).value,
    )


def _export(source: Any) -> Any:
    try:
        # DLPack 1.0 capsules can say an array is read-only, which the older ones cannot.
        return source.__dlpack__(max_version=(1, 0))
    except TypeError:  # a producer from before DLPack 1.0
        return source.__dlpack__()


def to_host(source: Any) -> tuple[np.ndarray, str]:
    """A host copy, and its datatype, of a DLPack tensor numpy cannot read itself (in device
    memory, or BF16), through torch."""
    torch = _torch("a tensor in device memory or of type BF16 is read")
    tensor = torch.utils.dlpack.from_dlpack(source).cpu()
    if tensor.dtype == torch.bfloat16:
        return tensor.view(torch.int16).numpy().view(NUMPY_DTYPES["BF16"]), "BF16"
    array = tensor.numpy()
    return array, wire_datatype_of(array)


def _torch(what: str) -> Any:
    try:
        import torch
    except ImportError:
        raise ValueError(f"{what} through torch, which is not installed") from None
    return torch


def tensors_by_name(tensors: Sequence[Tensor]) -> dict[str, Tensor]:
    return {t.name(): t for t in tensors}
