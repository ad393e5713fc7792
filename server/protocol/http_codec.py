"""KServe v2 JSON and Triton's binary tensor extension <-> InferRequest / InferResponse."""

from __future__ import annotations

from typing import Any

import numpy as np
import orjson

from server.errors import ServerError, internal, invalid_arg
from server.tensors import BYTES, NUMPY_DTYPES, element_count, from_buffer, to_bytes
from server.types import InferInput, InferRequest, InferResponse, RequestedOutput

_RESERVED_PARAMS = ("sequence_id", "sequence_start", "sequence_end", "priority", "timeout", "binary_data_output", "headers")
_JSON_FORBIDDEN = ("FP16", "BF16")


def parse_json(buffer: bytes | memoryview) -> Any:
    if not len(buffer):
        raise invalid_arg("failed to parse the request JSON buffer: The document is empty.")
    try:
        return orjson.loads(buffer)
    except orjson.JSONDecodeError as exc:
        raise invalid_arg(f"failed to parse the request JSON buffer: {exc}") from None


def decode_infer_request(
    body: bytes, header_length: int | None, model_name: str, model_version: str
) -> InferRequest:
    view = memoryview(body)
    if header_length is None:
        header, binary = view, view[len(view) :]
    else:
        header, binary = view[:header_length], view[header_length:]
    document = parse_json(header)
    if not isinstance(document, dict):
        raise invalid_arg("failed to parse the request JSON buffer: expected a JSON object")
    request = InferRequest(model_name=model_name, model_version=model_version)
    request_id = document.get("id")
    if request_id is not None:
        if not isinstance(request_id, str):
            raise invalid_arg("unable to parse 'id': expected a string")
        request.id = request_id
    params = document.get("parameters") or {}
    if not isinstance(params, dict):
        raise invalid_arg("unable to parse 'parameters': expected a JSON object")
    apply_request_parameters(request, params)
    raw_inputs = document.get("inputs")
    if not isinstance(raw_inputs, list):
        raise invalid_arg("unable to parse 'inputs': expected an array")
    offset = 0
    for item in raw_inputs:
        tensor, used = _decode_input(item, binary, offset)
        offset += used
        request.inputs.append(tensor)
    if offset != len(binary):
        raise invalid_arg(
            f"unexpected additional input data: the request carries {len(binary)} bytes of binary "
            f"tensor data but its inputs describe {offset}"
        )
    raw_outputs = document.get("outputs")
    if raw_outputs is not None:
        if not isinstance(raw_outputs, list):
            raise invalid_arg("unable to parse 'outputs': expected an array")
        request.outputs = [_decode_output(o) for o in raw_outputs]
    return request


def apply_request_parameters(request: InferRequest, params: dict[str, Any]) -> None:
    for key, value in params.items():
        if key.startswith("triton_"):
            raise invalid_arg(f"parameter keys starting with 'triton_' are reserved for Triton usage and should not be specified: '{key}'")
        if key == "priority":
            request.priority = _uint_param(key, value)
        elif key == "timeout":
            request.timeout_us = _uint_param(key, value)
    request.parameters = params


def _uint_param(key: str, value: Any) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        raise invalid_arg(f"parameter '{key}' must be a non-negative integer")
    return value


def _decode_input(item: Any, binary: memoryview, offset: int) -> tuple[InferInput, int]:
    if not isinstance(item, dict):
        raise invalid_arg("unable to parse 'inputs': each input must be a JSON object")
    name = item.get("name")
    if not isinstance(name, str):
        raise invalid_arg("unable to parse 'name' of an input")
    datatype = item.get("datatype")
    if not isinstance(datatype, str):
        raise invalid_arg(f"unable to parse 'datatype' of input '{name}'")
    if datatype not in NUMPY_DTYPES:
        raise invalid_arg(f"invalid datatype '{datatype}' of input '{name}'")
    shape = item.get("shape")
    if not isinstance(shape, list) or not all(isinstance(d, int) and not isinstance(d, bool) for d in shape):
        raise invalid_arg(f"unable to parse 'shape' of input '{name}'")
    dims = tuple(shape)
    params = item.get("parameters") or {}
    if not isinstance(params, dict):
        raise invalid_arg(f"unable to parse 'parameters' of input '{name}'")
    has_data = "data" in item
    binary_size = params.get("binary_data_size")
    shm = params.get("shared_memory_region")
    if sum(x is not None and x is not False for x in (item.get("data") if has_data else None, binary_size, shm)) != 1:
        raise invalid_arg(
            f"Input '{name}' must set only one of the following fields: 'data', 'binary_data_size' "
            "in 'parameters', 'shared_memory_region' in 'parameters'"
        )
    if any(d < 0 for d in dims):
        raise invalid_arg(f"All input dimensions should be specified for input '{name}', got {list(dims)}")
    if shm is not None:
        return InferInput(name, datatype, dims, np.empty(0), params), 0
    if binary_size is not None:
        if isinstance(binary_size, bool) or not isinstance(binary_size, int) or binary_size < 0:
            raise invalid_arg(f"unable to parse 'binary_data_size' of input '{name}'")
        if offset + binary_size > len(binary):
            raise invalid_arg(
                f"unexpected binary data size for input '{name}': 'binary_data_size' is "
                f"{binary_size} but only {len(binary) - offset} bytes remain in the request body"
            )
        array = from_buffer(binary[offset : offset + binary_size], datatype, dims, name)
        return InferInput(name, datatype, dims, array, params), binary_size
    if datatype in _JSON_FORBIDDEN:
        raise invalid_arg(
            f"receiving {datatype} data via JSON is not supported. Please use the binary data format for input {name}"
        )
    return InferInput(name, datatype, dims, _json_data(item["data"], datatype, dims, name), params), 0


def _json_data(data: Any, datatype: str, dims: tuple[int, ...], name: str) -> np.ndarray:
    expected = element_count(dims)
    if datatype == BYTES:
        flat = _flatten(data)
        if len(flat) != expected:
            raise internal(
                f"Unable to parse 'data': Shape does not match true shape of 'data' field for input '{name}'"
            )
        array = np.empty(len(flat), dtype=object)
        for i, item in enumerate(flat):
            if not isinstance(item, str):
                raise invalid_arg(f"unable to parse 'data' of input '{name}': expected strings")
            array[i] = item.encode("utf-8")
        return array.reshape(dims)
    try:
        array = np.asarray(data, dtype=NUMPY_DTYPES[datatype])
    except (ValueError, TypeError, OverflowError):
        raise invalid_arg(f"unable to parse 'data' of input '{name}' as {datatype}") from None
    if array.size != expected:
        raise internal(
            f"Unable to parse 'data': Shape does not match true shape of 'data' field for input '{name}'"
        )
    return array.reshape(dims)


def _flatten(data: Any) -> list[Any]:
    if not isinstance(data, list):
        return [data]
    out: list[Any] = []
    stack = [iter(data)]
    while stack:
        for item in stack[-1]:
            if isinstance(item, list):
                if len(stack) > 100:
                    raise invalid_arg("unable to parse 'data': nesting is deeper than 100 levels")
                stack.append(iter(item))
                break
            out.append(item)
        else:
            stack.pop()
    return out


def _decode_output(item: Any) -> RequestedOutput:
    if not isinstance(item, dict) or not isinstance(item.get("name"), str):
        raise invalid_arg("unable to parse 'outputs': each output must be an object with a 'name'")
    params = item.get("parameters") or {}
    if not isinstance(params, dict):
        raise invalid_arg(f"unable to parse 'parameters' of output '{item['name']}'")
    if params.get("shared_memory_region") is not None and params.get("binary_data"):
        raise invalid_arg("Output can't set both 'shared_memory_region' and 'binary_data'")
    classification = params.get("classification")
    if classification is not None and (isinstance(classification, bool) or not isinstance(classification, int) or classification < 0):
        raise invalid_arg(f"unable to parse 'classification' of output '{item['name']}'")
    return RequestedOutput(item["name"], params)


def encode_infer_response(response: InferResponse, request: InferRequest) -> tuple[bytes, int | None]:
    """Returns the body and, when any output is binary, the JSON header length."""
    default_binary = bool(request.parameters.get("binary_data_output", False))
    outputs_json: list[dict[str, Any]] = []
    chunks: list[bytes | memoryview] = []
    for tensor in response.outputs:
        params = tensor.parameters
        binary = bool(params.get("binary_data", default_binary)) if params else default_binary
        entry: dict[str, Any] = {"name": tensor.name, "datatype": tensor.datatype, "shape": list(tensor.shape)}
        if params and "shared_memory_region" in params:
            outputs_json.append(entry)  # the data went to the client's region
            continue
        out_params = {k: v for k, v in params.items() if k not in ("binary_data", "classification")} if params else {}
        if binary:
            raw = to_bytes(tensor.data, tensor.datatype)
            out_params["binary_data_size"] = len(raw)
            if len(raw):
                chunks.append(raw)
        else:
            entry["data"] = _json_values(tensor.data, tensor.datatype, tensor.name)
        if out_params:
            entry["parameters"] = out_params
        outputs_json.append(entry)
    document: dict[str, Any] = {}
    if response.id:
        document["id"] = response.id
    document["model_name"] = response.model_name
    document["model_version"] = response.model_version
    if response.parameters:
        document["parameters"] = response.parameters
    document["outputs"] = outputs_json
    header = orjson.dumps(document, option=orjson.OPT_SERIALIZE_NUMPY)
    if not chunks and not any("binary_data_size" in o.get("parameters", {}) for o in outputs_json):
        return header, None
    return b"".join([header, *chunks]), len(header)


def _json_values(array: np.ndarray, datatype: str, name: str) -> Any:
    if datatype in _JSON_FORBIDDEN:
        raise ServerError(
            invalid_arg("").code,
            f"sending {datatype} data via JSON is not supported. Please use the binary data format for output {name}",
        )
    flat = array.reshape(-1)
    if datatype == BYTES:
        return [
            item.decode("utf-8", errors="replace") if isinstance(item, bytes) else str(item) for item in flat
        ]
    if not flat.flags.c_contiguous or flat.dtype.byteorder == ">":
        flat = np.ascontiguousarray(flat, dtype=flat.dtype.newbyteorder("="))
    return flat
