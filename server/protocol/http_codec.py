"""KServe v2 JSON and Triton's binary tensor extension <-> InferRequest / InferResponse.

Messages and status codes follow tritonserver's HTTP front end, quirks included: a field of
the wrong JSON type is an INTERNAL error ("Unable to parse 'x': attempt to access ...").
"""

from __future__ import annotations

import re
from typing import TYPE_CHECKING, Any

import numpy as np
import orjson

from server.errors import internal, invalid_arg
from server.protocol import json_errors
from server.protocol.tensor_data import JSON_FORBIDDEN, json_tensor, json_values
from server.shm import BYTE_SIZE, OFFSET, REGION
from server.tensors import (
    BYTES,
    NUMPY_DTYPES,
    check_bytes_count,
    check_new_input,
    deferred_contents,
    from_buffer,
    request_prefix,
    to_bytes,
)
from server.types import InferInput, InferRequest, InferResponse, RequestedOutput

if TYPE_CHECKING:
    from server.repository.view import ModelView

_LEADING_INT = re.compile(rb"\s*([+-]?\d+)")
_CONTENT_FIELDS = ("data", "binary_data_size", "shared_memory_region")
_DATA_ONLY = ("data",)
_BINARY_ONLY = ("binary_data_size",)
# The name Triton gives the one input of a raw binary request in its byte-size message.
RAW_INPUT = "raw_input"


def parse_json(buffer: bytes | memoryview, infer: bool = False) -> Any:
    try:
        return json_errors.loads_infer(buffer) if infer else json_errors.loads(buffer)
    except json_errors.JsonSyntaxError as exc:
        raise internal(f"failed to parse the request JSON buffer: {exc}") from None


def _missing(key: str) -> Exception:
    return internal(
        f"Unable to parse '{key}': attempt to access non-existing object member '{key}'"
    )


def _wrong_type(key: str, kind: str, verb: str = "parse") -> Exception:
    return internal(f"Unable to {verb} '{key}': attempt to access JSON non-{kind} as {kind}")


def header_length(value: str | None, body_length: int) -> int | None:
    """``Inference-Header-Content-Length`` read like C's strtol: leading digits count, text
    without any reads as 0, which makes the request a raw binary one."""
    if value is None:
        return None
    if value.isdigit() and value.isascii():
        length = int(value)
    else:
        match = _LEADING_INT.match(value.encode("latin-1", "replace"))
        length = int(match.group(1)) if match else 0
    if length < 0 or length > body_length:
        raise invalid_arg(
            f"inference header size should be in range (0, {body_length}), got: {length}"
        )
    return length


def decode_infer_request(
    body: bytes | bytearray, header_len: int | None, model_name: str, model_version: str
) -> InferRequest:
    view = memoryview(body)
    if header_len is None:
        header, binary = view, view[len(view) :]
    else:
        header, binary = view[:header_len], view[header_len:]
    document = parse_json(header, infer=True)
    request = InferRequest(model_name=model_name, model_version=model_version)
    if not isinstance(document, dict):
        raise _missing("inputs")
    if "id" in document:
        if not isinstance(document["id"], str):
            raise _wrong_type("id", "string")
        request.id = document["id"]
    if "parameters" in document:
        params = document["parameters"]
        if not isinstance(params, dict):
            raise internal("failed to get request params.: attempt to get members for non-object")
        apply_request_parameters(request, params)
    if "inputs" not in document:
        raise _missing("inputs")
    raw_inputs = document["inputs"]
    if not isinstance(raw_inputs, list):
        raise _wrong_type("inputs", "array")
    offset = 0
    names: set[str] = set()
    for item in raw_inputs:
        tensor, used = _decode_input(item, binary, offset, request, names)
        offset += used
        request.inputs.append(tensor)
    if offset != len(binary):
        raise invalid_arg(f"unexpected additional input data for model '{model_name}'")
    if "outputs" in document:
        raw_outputs = document["outputs"]
        if not isinstance(raw_outputs, list):
            raise _wrong_type("outputs", "array")
        outputs: dict[str, RequestedOutput] = {}
        for item in raw_outputs:
            output = _decode_output(item)
            # A name asked for twice is answered once.
            outputs.setdefault(output.name, output)
        request.outputs = list(outputs.values()) or None
    return request


def apply_request_parameters(request: InferRequest, params: dict[str, Any]) -> None:
    for key, value in params.items():
        if key.startswith("triton_"):
            raise invalid_arg(
                "parameter keys starting with 'triton_' are reserved for Triton usage and should not be specified."
            )
        if key in ("priority", "timeout"):
            if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value < 2**64:
                raise _wrong_type(key, "unsigned-integer")
            if key == "priority":
                request.priority = value
            else:
                request.timeout_us = value
        elif key == "binary_data_output":
            if not isinstance(value, bool):
                raise _wrong_type(key, "boolean")
        elif not isinstance(value, (str, int, float)):
            raise invalid_arg(
                f"parameter '{key}' has invalid type. It should be either 'int', 'bool', or 'string'."
            )
    request.parameters = params


def _decode_input(
    item: Any, binary: memoryview, offset: int, request: InferRequest, names: set[str]
) -> tuple[InferInput, int]:
    fields = item if isinstance(item, dict) else {}
    params = fields.get("parameters")
    params = params if isinstance(params, dict) else {}
    present: tuple[str, ...]
    if "data" in fields and not params:
        present = _DATA_ONLY  # the common JSON input, without building the tuple
    elif (
        "binary_data_size" in params
        and "data" not in fields
        and "shared_memory_region" not in params
    ):
        present = _BINARY_ONLY  # the common binary input, likewise
    else:
        present = tuple(
            name
            for name, where in zip(_CONTENT_FIELDS, (fields, params, params), strict=True)
            if name in where
        )
    if len(present) != 1:
        which = "no field is set" if not present else "set " + " ".join(f"'{p}'" for p in present)
        raise invalid_arg(
            "Input must set only one of the following fields: 'data', 'binary_data_size' in "
            f"'parameters', 'shared_memory_region' in 'parameters'. But {which}"
        )
    name = _string(fields, "name")
    datatype = _string(fields, "datatype")
    if "shape" not in fields:
        raise _missing("shape")
    shape = fields["shape"]
    if not isinstance(shape, list):
        raise _wrong_type("shape", "array")
    for d in shape:
        # type() rather than isinstance(): a JSON boolean is not a dimension.
        if type(d) is not int or not 0 <= d < 2**63:
            raise _wrong_type("shape", "unsigned-integer")
    check_new_input(names, name, request.id)
    if datatype not in NUMPY_DTYPES:
        raise invalid_arg(f"invalid datatype for input {name}")
    dims = tuple(shape)
    if present[0] == "shared_memory_region":
        _shared_memory_parameters(params)
        return InferInput(name, datatype, dims, np.empty(0), params), 0
    model = request.model_name
    if present[0] == "binary_data_size":
        size = params["binary_data_size"]
        if isinstance(size, bool) or not isinstance(size, int) or size < 0:
            raise _wrong_type("binary_data_size", "unsigned-integer")
        remaining = len(binary) - offset
        if size > remaining:
            raise invalid_arg(
                f"unexpected size for input '{name}', expecting {size - remaining} additional bytes for model '{model}'"
            )
        chunk = binary[offset : offset + size]
        return deferred_contents(
            name,
            datatype,
            dims,
            params,
            from_buffer,
            chunk,
            datatype,
            dims,
            name,
            model,
            request.id,
        ), size
    if not dims or 0 in dims:
        # No elements (Triton counts none in an empty shape): Triton reads no data at all.
        empty = np.empty(dims or (0,), dtype=NUMPY_DTYPES[datatype])
        return InferInput(name, datatype, dims, empty, params), 0
    if datatype in JSON_FORBIDDEN:
        raise invalid_arg(
            f"receiving {datatype} data via JSON is not supported. Please use the binary data format for input {name}"
        )
    array = json_tensor(fields["data"], datatype, dims)
    if datatype == BYTES:
        return deferred_contents(
            name, datatype, dims, params, check_bytes_count, array, dims, name, model, request.id
        ), 0
    return InferInput(name, datatype, dims, array, params), 0


def _string(fields: dict[str, Any], key: str) -> str:
    if key not in fields:
        raise _missing(key)
    value = fields[key]
    if not isinstance(value, str):
        raise _wrong_type(key, "string")
    return value


def _shared_memory_parameters(params: dict[str, Any]) -> None:
    """Triton's HTTP front end reads a tensor's shared-memory parameters with its JSON
    accessors (INTERNAL when one is of the wrong kind): the region's name, then the offset,
    then the byte size, which is 0 when left out."""
    if not isinstance(params[REGION], str):
        raise _wrong_type(REGION, "string")
    for key in (OFFSET, BYTE_SIZE):
        if key in params:
            value = params[key]
            # type() rather than isinstance(): a JSON boolean is not a number.
            if type(value) is not int or not 0 <= value < 2**64:
                raise _wrong_type(key, "unsigned-integer")
    params.setdefault(BYTE_SIZE, 0)


def _decode_output(item: Any) -> RequestedOutput:
    fields = item if isinstance(item, dict) else {}
    name = _string(fields, "name")
    params = fields.get("parameters", {})
    if not isinstance(params, dict):
        params = {}  # Triton reads an output's parameters only when they are an object
    if "binary_data" in params and not isinstance(params["binary_data"], bool):
        raise _wrong_type("binary_data", "boolean")
    if REGION in params:
        _shared_memory_parameters(params)
    if params.get("shared_memory_region") is not None and params.get("binary_data"):
        raise invalid_arg("Output can't set both 'shared_memory_region' and 'binary_data'")
    if "classification" in params:
        classes = params["classification"]
        if isinstance(classes, bool) or not isinstance(classes, int) or classes < 0:
            raise _wrong_type("classification", "unsigned-integer", "set")
        if classes and params.get("shared_memory_region") is not None:
            raise invalid_arg("Output can't set both 'shared_memory_region' and 'classification'")
    return RequestedOutput(name, params)


def decode_raw_request(
    body: bytes | bytearray, view: ModelView, model_version: str
) -> InferRequest:
    """``Inference-Header-Content-Length: 0``: the whole body is the data of the model's only
    input, whose shape is deduced from the body size; every output comes back binary."""
    prefix = request_prefix("")
    if len(view.inputs) != 1:
        raise invalid_arg(
            f"{prefix}Raw request must only have 1 input (found 1) to be deduced but got "
            f"{len(view.inputs)} inputs in '{view.name}' model configuration"
        )
    spec = next(iter(view.inputs.values()))
    batch = (1,) if view.max_batch_size > 0 else ()
    if spec.datatype == BYTES:
        if spec.dims != (1,):
            raise invalid_arg(
                f"{prefix}For BYTE datatype raw input '{spec.name}', the model must have input shape [1]"
            )
        data = np.empty(1, dtype=object)
        data[0] = bytes(body)
        dims = (*batch, 1)
        array = data.reshape(dims)
    else:
        variable = [i for i, d in enumerate(spec.dims) if d < 0]
        if len(variable) > 1:
            raise invalid_arg(
                f"{prefix}The shape of the raw input '{spec.name}' can not be deduced because there "
                "are more than one variable-sized dimension"
            )
        itemsize = NUMPY_DTYPES[spec.datatype].itemsize
        fixed = 1
        for d in spec.dims:
            fixed *= d if d >= 0 else 1
        deduced = list(spec.dims)
        if variable:
            deduced[variable[0]] = len(body) // itemsize // fixed if fixed else 0
        dims = (*batch, *deduced)
        array = from_buffer(memoryview(body), spec.datatype, dims, RAW_INPUT, view.name)
    request = InferRequest(model_name=view.name, model_version=model_version)
    request.inputs.append(InferInput(spec.name, spec.datatype, dims, array, {}))
    request.parameters = {"binary_data_output": True}
    return request


def encode_infer_response(
    response: InferResponse, request: InferRequest
) -> tuple[bytes, int | None]:
    """The body and, when any binary output carries bytes, the JSON header's length."""
    default_binary = bool(request.parameters.get("binary_data_output", False))
    outputs_json: list[dict[str, Any]] = []
    chunks: list[bytes | memoryview] = []
    for tensor in response.outputs:
        params = tensor.parameters
        entry: dict[str, Any] = {
            "name": tensor.name,
            "datatype": tensor.datatype,
            "shape": list(tensor.shape),
        }
        if params and "shared_memory_region" in params:
            outputs_json.append(entry)  # the data went to the client's region
            continue
        binary = bool(params.get("binary_data", default_binary)) if params else default_binary
        if binary:
            raw = to_bytes(tensor.data, tensor.datatype)
            entry["parameters"] = {"binary_data_size": len(raw)}
            if len(raw):
                chunks.append(raw)
        else:
            entry["data"] = json_values(tensor.data, tensor.datatype)
        outputs_json.append(entry)
    document: dict[str, Any] = {}
    if response.id:
        document["id"] = response.id
    document["model_name"] = response.model_name
    document["model_version"] = response.model_version
    if response.parameters:
        document["parameters"] = response.parameters
    document["outputs"] = outputs_json
    header = json_errors.dumps(document, option=orjson.OPT_SERIALIZE_NUMPY)
    if not chunks:
        return header, None
    return b"".join([header, *chunks]), len(header)
