"""KServe v2 gRPC messages <-> InferRequest / InferResponse.

Inputs arrive as ``raw_input_contents`` (decoded with ``np.frombuffer``: no copy beyond the
one protobuf makes, and none for a large request, ``parse_infer_request``) or as typed
``contents``; never both in one request. Responses always
carry ``raw_output_contents``, one entry per output, as Triton's server does.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np

from server.errors import invalid_arg
from server.protocol.generated import grpc_service_pb2 as pb
from server.shm import BYTE_SIZE, REGION
from server.tensors import (
    BYTES,
    NUMPY_DTYPES,
    byte_size_mismatch,
    check_bytes_count,
    check_new_input,
    deferred_contents,
    element_count,
    from_buffer,
    to_bytes,
)
from server.types import InferInput, InferRequest, InferResponse, RequestedOutput

FINAL_RESPONSE = "triton_final_response"
EMPTY_FINAL_RESPONSE = "triton_enable_empty_final_response"
_ALLOWED_TRITON_KEYS = (EMPTY_FINAL_RESPONSE,)
_EMPTY = np.empty(0, dtype=np.uint8)

# Which typed-contents field carries each datatype, and the datatype a field names in errors.
_CONTENTS_FIELD: dict[str, str] = {
    "BOOL": "bool_contents",
    "INT8": "int_contents",
    "INT16": "int_contents",
    "INT32": "int_contents",
    "INT64": "int64_contents",
    "UINT8": "uint_contents",
    "UINT16": "uint_contents",
    "UINT32": "uint_contents",
    "UINT64": "uint64_contents",
    "FP32": "fp32_contents",
    "FP64": "fp64_contents",
    "BYTES": "bytes_contents",
}
_FIELD_DATATYPE: dict[str, str] = {
    "bool_contents": "BOOL",
    "int_contents": "INT32",
    "int64_contents": "INT64",
    "uint_contents": "UINT32",
    "uint64_contents": "UINT64",
    "fp32_contents": "FP32",
    "fp64_contents": "FP64",
    "bytes_contents": "BYTES",
}
# The kinds of value tritonserver's gRPC front end takes for a request parameter, and its
# words for them; every other key takes the last entry's.
_PARAM_TYPES: dict[str, tuple[tuple[str, ...], str]] = {
    "priority": (("int64_param", "uint64_param"), "int64_param or uint64_param"),
    "timeout": (("int64_param",), "int64_param"),
    "sequence_id": (("int64_param", "string_param"), "int64_param or string_param"),
    "sequence_start": (("bool_param",), "bool_param"),
    "sequence_end": (("bool_param",), "bool_param"),
    EMPTY_FINAL_RESPONSE: (("bool_param",), "bool_param"),
}
_OTHER_PARAM_TYPES = (
    ("int64_param", "bool_param", "string_param", "double_param"),
    "int64_param, bool_param, or string_param",
)


def parameters_to_dict(params: Mapping[str, Any]) -> dict[str, Any]:
    """A ``map<string, InferParameter>`` as plain Python values."""
    result: dict[str, Any] = {}
    for key, param in params.items():
        which = param.WhichOneof("parameter_choice")
        result[key] = getattr(param, which) if which else None
    return result


def set_parameters(target: Any, values: Mapping[str, Any]) -> None:
    for key, value in values.items():
        param = target[key]
        if isinstance(value, bool):
            param.bool_param = value
        elif isinstance(value, int):
            if value > 2**63 - 1:
                param.uint64_param = value
            else:
                param.int64_param = value
        elif isinstance(value, float):
            param.double_param = value
        else:
            param.string_param = str(value)


# raw_input_contents, field 7 of ModelInferRequest, as its tag with wire type 2 (bytes).
_RAW_INPUTS_TAG = 7 << 3 | 2
# From this size a request's raw inputs are read where they arrived (``parse_infer_request``).
SPLIT_FROM = 64 * 1024


class SplitInferRequest:
    """A ModelInferRequest whose ``raw_input_contents`` are views of the bytes it arrived
    in; its other fields are the ``message``'s."""

    __slots__ = ("message", "raw_input_contents")

    def __init__(self, message: Any, raw_input_contents: list[memoryview]) -> None:
        self.message = message
        self.raw_input_contents = raw_input_contents

    def __getattr__(self, name: str) -> Any:
        return getattr(self.message, name)


class _Unsplit(Exception):
    pass


def parse_infer_request(data: bytes | memoryview) -> Any:
    """A ModelInferRequest from its wire bytes. protobuf copies each raw input into the
    message, and reading it copies it again into a new bytes object: a large request's
    top-level fields are walked once instead, its raw inputs kept as views of ``data``
    (bytes that nothing changes) and the rest parsed by protobuf. What the walk does not take
    (a group, a malformed field) is parsed whole, and protobuf decides."""
    if len(data) >= SPLIT_FROM:
        try:
            return _split(memoryview(data))
        except _Unsplit:
            pass
    return pb.ModelInferRequest.FromString(data)


def _split(view: memoryview) -> SplitInferRequest:
    rest: list[memoryview] = []
    raws: list[memoryview] = []
    kept = position = 0
    end = len(view)
    while position < end:
        start = position
        tag, position = _read_varint(view, position)
        kind = tag & 7
        if kind == 2:
            length, position = _read_varint(view, position)
            if tag == _RAW_INPUTS_TAG:
                if position + length > end:
                    raise _Unsplit
                if start > kept:
                    rest.append(view[kept:start])
                raws.append(view[position : position + length])
                kept = position = position + length
                continue
            position += length
        elif tag >> 3 == 7:
            raise _Unsplit  # the field with a wire type it cannot have
        elif kind == 0:
            position = _read_varint(view, position)[1]
        elif kind == 1:
            position += 8
        elif kind == 5:
            position += 4
        else:
            raise _Unsplit
    if position != end or not raws:
        raise _Unsplit
    if kept < end:
        rest.append(view[kept:end])
    return SplitInferRequest(pb.ModelInferRequest.FromString(b"".join(rest)), raws)


def _read_varint(view: memoryview, position: int) -> tuple[int, int]:
    value = shift = 0
    while position < len(view) and shift < 64:
        byte = view[position]
        position += 1
        value |= (byte & 0x7F) << shift
        if byte < 0x80:
            return value, position
        shift += 7
    raise _Unsplit


def decode_infer_request(message: Any) -> InferRequest:
    model = message.model_name
    request = InferRequest(model_name=model, model_version=message.model_version, id=message.id)
    if message.parameters:
        _apply_request_parameters(request, message.parameters)
    raw = message.raw_input_contents
    use_raw = len(raw) > 0
    raw_index = 0
    inputs = request.inputs
    # Triton adds every input to the request before it reads any input's data. The inputs
    # are taken out of the message once: walking protobuf's container costs more than
    # walking a list, twice over here.
    tensors = message.inputs[:]
    names: set[str] = set()
    for tensor in tensors:
        check_new_input(names, tensor.name, request.id)
    for tensor in tensors:
        name = tensor.name
        datatype = tensor.datatype
        dims = tuple(tensor.shape[:])
        params = parameters_to_dict(tensor.parameters) if tensor.parameters else {}
        has_contents = tensor.HasField("contents")
        if REGION in params:
            _check_shm_parameters(tensor.parameters, name)
            if has_contents:
                raise invalid_arg(
                    f"unexpected 'content' provided when using shared memory for input tensor "
                    f"'{name}' for model '{model}'"
                )
            inputs.append(InferInput(name, datatype, dims, _EMPTY, params))
            continue
        if use_raw:
            if has_contents:
                raise invalid_arg(
                    f"contents field must not be specified when using raw_input_contents for "
                    f"'{name}' for model '{model}'"
                )
            if raw_index >= len(raw):
                raise _missing_data(name, model)
            buffer = raw[raw_index]
            raw_index += 1
            # Negative dims and unknown datatypes are reported by validation, with the
            # model's context, as Triton's core reports them.
            if (dims and min(dims) < 0) or datatype not in NUMPY_DTYPES:
                data = _EMPTY
            else:
                inputs.append(
                    deferred_contents(
                        name,
                        datatype,
                        dims,
                        params,
                        from_buffer,
                        *(buffer, datatype, dims, name, model, request.id),
                    )
                )
                continue
        elif has_contents:
            values = _typed_contents(tensor.contents, datatype, dims, name, request)
            if values is None:
                data = _EMPTY
            else:
                # Triton's core checks the count, as for raw contents (``deferred_contents``).
                check = check_bytes_count if datatype == BYTES else _typed_array
                args = (values, dims, name, model, request.id)
                inputs.append(deferred_contents(name, datatype, dims, params, check, *args))
                continue
        else:
            raise _missing_data(name, model)
        inputs.append(InferInput(name, datatype, dims, data, params))
    if message.outputs:
        request.outputs = [_decode_output(o) for o in message.outputs]
    return request


def _missing_data(name: str, model: str) -> Exception:
    return invalid_arg(
        f"unable to find data for input tensor '{name}' for model '{model}' in request."
    )


def _apply_request_parameters(request: InferRequest, params: Mapping[str, Any]) -> None:
    values: dict[str, Any] = {}
    for key, param in params.items():
        which = param.WhichOneof("parameter_choice")
        if key.startswith("triton_") and key not in _ALLOWED_TRITON_KEYS:
            raise invalid_arg(
                "parameter keys starting with 'triton_' are reserved for Triton usage. Only the "
                "following keys starting with 'triton_' are allowed: "
                + ", ".join(_ALLOWED_TRITON_KEYS)
            )
        kinds, words = _PARAM_TYPES.get(key, _OTHER_PARAM_TYPES)
        if which not in kinds:
            raise invalid_arg(f"invalid value type for '{key}' parameter, expected {words}.")
        value = getattr(param, which)
        if key == "priority":
            if value < 0:
                raise invalid_arg("invalid value for 'priority', expected value >= 0.")
            request.priority = int(value)
        elif key == "timeout":
            request.timeout_us = max(int(value or 0), 0)
        values[key] = value
    request.parameters = values


def _check_shm_parameters(params: Mapping[str, Any], name: str) -> None:
    region = params[REGION].WhichOneof("parameter_choice")
    if region != "string_param":
        raise invalid_arg(
            f"invalid value type for '{REGION}' parameter for tensor '{name}', expected string_param."
        )
    size = params[BYTE_SIZE].WhichOneof("parameter_choice") if BYTE_SIZE in params else None
    if size is None:
        raise invalid_arg(
            f"'{BYTE_SIZE}' must be specified along with '{REGION}' parameter for tensor '{name}'"
        )
    if size not in ("int64_param", "uint64_param"):
        raise invalid_arg(
            f"invalid value type for '{BYTE_SIZE}' parameter for tensor '{name}', expected "
            "int64_param or uint64_param."
        )


def _typed_contents(
    contents: Any, datatype: str, dims: tuple[int, ...], name: str, request: InferRequest
) -> np.ndarray | None:
    """The flat values of an input's typed contents (a BYTES array, or the numbers as the
    datatype); None for a shape with a negative dimension or an unknown datatype, which
    validation reports."""
    model = request.model_name
    expected_field = _CONTENTS_FIELD.get(datatype)
    supplied = False
    # Set fields come in field-number order, as Triton walks them: another kind of data
    # after the datatype's own is refused in other words than one before it.
    for field, _ in contents.ListFields():
        if field.name == expected_field:
            supplied = True
            continue
        if supplied:
            raise invalid_arg(
                f"unexpected explicit tensor data for input tensor '{name}' for model '{model}', "
                "binary data was already supplied."
            )
        shown = datatype if datatype in NUMPY_DTYPES else "<invalid>"
        raise invalid_arg(
            f"unexpected explicit tensor data for input tensor '{name}' for model '{model}' of "
            f"type '{_FIELD_DATATYPE[field.name]}', expected datatype '{shown}'"
        )
    if expected_field is None:
        if datatype not in NUMPY_DTYPES:
            return None  # validation names the datatype '<invalid>', as Triton's core does
        # FP16 and BF16 have no typed field; an empty contents message lands here.
        raise _missing_data(name, model)
    if any(d < 0 for d in dims):
        return None
    values = getattr(contents, expected_field)
    if datatype == BYTES:
        array = np.empty(len(values), dtype=object)
        array[:] = list(values)
        return array
    try:
        return np.asarray(values, dtype=NUMPY_DTYPES[datatype])
    except OverflowError:
        raise invalid_arg(f"values of input '{name}' do not fit datatype {datatype}") from None


def _typed_array(
    values: np.ndarray, dims: tuple[int, ...], name: str, model: str, request_id: str
) -> np.ndarray:
    count = element_count(dims)
    if len(values) != count:
        size = values.dtype.itemsize
        raise byte_size_mismatch(name, model, request_id, count * size, len(values) * size)
    return values.reshape(dims)


def _decode_output(output: Any) -> RequestedOutput:
    params = parameters_to_dict(output.parameters) if output.parameters else {}
    if REGION in params:
        _check_shm_parameters(output.parameters, output.name)
    return RequestedOutput(output.name, params)


def encode_infer_response(response: InferResponse, extra: Mapping[str, Any] | None = None) -> Any:
    message, raws = _encode_head(response, extra)
    return _with_raws(message, raws)


def encode_unary_response(response: InferResponse) -> Any:
    """ModelInfer's answer: the message, or, when its raw outputs come to
    ``PIECES_THRESHOLD`` bytes or more, a ``RawTailMessage`` that carries the tensors' own
    buffers instead of copies of them."""
    message, raws = _encode_head(response, None)
    size = 0
    for raw in raws:
        size += len(raw)
    if size < PIECES_THRESHOLD:
        return _with_raws(message, raws)
    return RawTailMessage(message.SerializeToString(), raws)


def _with_raws(message: Any, raws: list[bytes | memoryview]) -> Any:
    message.raw_output_contents.extend(
        [raw if isinstance(raw, bytes) else raw.tobytes() for raw in raws]
    )
    return message


def _encode_head(
    response: InferResponse, extra: Mapping[str, Any] | None
) -> tuple[Any, list[bytes | memoryview]]:
    """The response message without its raw contents, and those contents (byte views)."""
    message = pb.ModelInferResponse(
        model_name=response.model_name, model_version=response.model_version, id=response.id
    )
    raws: list[bytes | memoryview] = []
    outputs = message.outputs
    for tensor in response.outputs:
        entry = outputs.add()
        entry.name = tensor.name
        entry.datatype = tensor.datatype
        entry.shape.extend(tensor.shape)
        if tensor.parameters and REGION in tensor.parameters:
            raws.append(b"")  # written to the client's region; the slot stays for the index
            continue
        raws.append(to_bytes(tensor.data, tensor.datatype))
    if response.parameters:
        set_parameters(message.parameters, response.parameters)
    if extra:
        set_parameters(message.parameters, extra)
    return message, raws


# raw_output_contents is ModelInferResponse's field 6, bytes (wire type 2), and its highest
# field number: written after the rest of the message, its entries are where protobuf's own
# serializer puts them.
_RAW_OUTPUT_TAG = b"\x32"
PIECES_THRESHOLD = 64 * 1024


def _varint(value: int) -> bytes:
    out = bytearray()
    while value > 0x7F:
        out.append((value & 0x7F) | 0x80)
        value >>= 7
    out.append(value)
    return bytes(out)


class RawTailMessage:
    """A serialized ModelInferResponse in pieces: the message without its raw contents, as
    protobuf serializes it, then each raw_output_contents entry as its tag, its length and
    the output tensor's own buffer. The gRPC listener joins the pieces straight into what
    it writes, with no serialized copy of the whole message before that; anything else can
    ask for the joined bytes."""

    __slots__ = ("pieces",)

    def __init__(self, head: bytes, raws: list[bytes | memoryview]) -> None:
        pieces: list[bytes | memoryview] = [head]
        for raw in raws:
            pieces.append(_RAW_OUTPUT_TAG + _varint(len(raw)))
            if len(raw):
                pieces.append(raw)
        self.pieces = pieces

    def serialized_pieces(self) -> list[bytes | memoryview]:
        return self.pieces

    def SerializeToString(self) -> bytes:  # noqa: N802 - protobuf's name, for duck typing
        return b"".join(self.pieces)


def encode_stream_error(request_id: str, error_message: str, final: bool | None = None) -> Any:
    """An in-band stream error: the message, and a response that keeps only the id (and,
    for a decoupled model's error response, the final flag)."""
    response = pb.ModelInferResponse(id=request_id)
    if final is not None:
        response.parameters[FINAL_RESPONSE].bool_param = final
    return pb.ModelStreamInferResponse(error_message=error_message, infer_response=response)
