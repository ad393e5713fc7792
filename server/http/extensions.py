"""HTTP routes of Triton's shared-memory, trace and logging extensions. The state behind
them (``core.shm``, ``server.runtime_settings``) is shared with the gRPC front end."""

from __future__ import annotations

import base64
import binascii
import contextlib
from typing import Any

from fastapi import FastAPI, Request
from starlette.responses import Response

from server import runtime_settings
from server.core import Core
from server.errors import internal, invalid_arg, unavailable, unsupported
from server.http.app import json_response
from server.protocol.http_codec import parse_json


def _ok() -> Response:
    return Response(b"", status_code=200)


async def _object(request: Request) -> dict[str, Any]:
    """The body's JSON object. Triton looks members up in whatever document it parsed, and
    a document that is not an object has none."""
    body = await request.body()
    if not body:
        return {}
    document = parse_json(body)
    return document if isinstance(document, dict) else {}


def _wrong_kind(key: str, kind: str) -> Exception:
    """Triton's JSON accessors on a member of the wrong kind (a null included)."""
    return internal(f"attempt to access JSON non-{kind} as {kind}")


def _unknown_log_format(value: str) -> Exception:
    return unavailable(f"invalid argument for --log_format, got: {value}")


def _trace_changes(document: dict[str, Any]) -> dict[str, Any]:
    """Trace settings as Triton's HTTP front end reads them: the trace file cannot be set,
    the trace mode is not read, each other value is a string (a negative rate wraps as an
    unsigned 32-bit number), and ``trace_level`` an array of strings, of which it keeps the
    levels it knows (none is OFF)."""
    if document.get("trace_file") is not None:
        raise unsupported("trace file location can not be updated through network protocol")
    changes = {key: value for key, value in document.items() if key != "trace_mode"}
    for key in runtime_settings.TRACE_DEFAULTS:
        value = changes.get(key)
        if value is None:
            continue
        if key != "trace_level":
            if not isinstance(value, str):
                raise _wrong_kind(key, "string")
            if key == "trace_rate" and value.lstrip().startswith("-"):
                with contextlib.suppress(ValueError):
                    changes[key] = str(int(value) % 2**32)
            continue
        if not isinstance(value, list):
            raise _wrong_kind(key, "array")
        if not all(isinstance(level, str) for level in value):
            raise _wrong_kind(key, "string")
        changes[key] = [level for level in value if level in runtime_settings.TRACE_LEVELS] or [
            "OFF"
        ]
    return changes


def _field(document: dict[str, Any], key: str, kind: type, default: Any = None) -> Any:
    if key not in document:
        if default is not None:
            return default
        raise invalid_arg(f"Shared memory register request has no '{key}' field")
    value = document[key]
    if kind is int and (type(value) is not int or not 0 <= value < 2**64):
        raise _wrong_kind(key, "unsigned-integer")
    if kind is str and not isinstance(value, str):
        raise _wrong_kind(key, "string")
    return value


def _cuda_field(document: dict[str, Any], key: str) -> int:
    """A CUDA registration's number, in this server's own words: unlike the system fields
    above, these have not been compared with tritonserver, which needs a GPU to answer."""
    value = document.get(key)
    if value is None:
        raise invalid_arg(f"Shared memory register request has no '{key}' field")
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        raise invalid_arg(
            f"Shared memory register request field '{key}' must be a non-negative integer"
        )
    return value


def register(app: FastAPI, core: Core) -> None:
    shm = core.shm

    # --- system shared memory -------------------------------------------------------
    async def system_status(region: str = "") -> Response:
        return json_response(shm.system_status(region))

    async def system_register(request: Request, region: str) -> Response:
        body = await _object(request)
        # Read in Triton's order: the key, the offset (0 when left out), the byte size.
        key = _field(body, "key", str)
        offset = _field(body, "offset", int, 0)
        byte_size = _field(body, "byte_size", int)
        shm.register_system(region, key, offset, byte_size)
        return _ok()

    async def system_unregister(region: str = "") -> Response:
        shm.unregister_system(region)
        return _ok()

    # --- CUDA shared memory ---------------------------------------------------------
    async def cuda_status(region: str = "") -> Response:
        return json_response(shm.cuda_status(region))

    async def cuda_register(request: Request, region: str) -> Response:
        body = await _object(request)
        handle = body.get("raw_handle")
        encoded = handle.get("b64") if isinstance(handle, dict) else None
        if not isinstance(encoded, str):
            raise invalid_arg("Shared memory register request has no 'raw_handle' field")
        try:
            raw = base64.b64decode(encoded, validate=True)
        except (binascii.Error, ValueError):
            raise invalid_arg(
                "'raw_handle' must be a valid base64 encoded cudaIpcMemHandle_t"
            ) from None
        device_id = _cuda_field(body, "device_id")
        byte_size = _cuda_field(body, "byte_size")
        shm.register_cuda(region, raw, device_id, byte_size)
        return _ok()

    async def cuda_unregister(region: str = "") -> Response:
        shm.unregister_cuda(region)
        return _ok()

    for kind, status, register_region, unregister in (
        ("system", system_status, system_register, system_unregister),
        ("cuda", cuda_status, cuda_register, cuda_unregister),
    ):
        base = f"/v2/{kind}sharedmemory"
        app.add_api_route(f"{base}/status", status, methods=["GET"])
        app.add_api_route(f"{base}/region/{{region}}/status", status, methods=["GET"])
        app.add_api_route(f"{base}/region/{{region}}/register", register_region, methods=["POST"])
        app.add_api_route(f"{base}/unregister", unregister, methods=["POST"])
        app.add_api_route(f"{base}/region/{{region}}/unregister", unregister, methods=["POST"])

    # --- trace ----------------------------------------------------------------------
    async def get_trace(model: str = "") -> Response:
        runtime_settings.check_trace_model(core, model)
        return json_response(runtime_settings.for_core(core).trace.get(model))

    async def post_trace(request: Request, model: str = "") -> Response:
        runtime_settings.check_trace_model(core, model)
        changes = _trace_changes(await _object(request))
        return json_response(runtime_settings.for_core(core).trace.update(changes, model))

    app.add_api_route("/v2/trace/setting", get_trace, methods=["GET"])
    app.add_api_route("/v2/trace/setting", post_trace, methods=["POST"])
    app.add_api_route("/v2/models/{model}/trace/setting", get_trace, methods=["GET"])
    app.add_api_route("/v2/models/{model}/trace/setting", post_trace, methods=["POST"])

    # --- logging --------------------------------------------------------------------
    async def get_logging() -> Response:
        return json_response(runtime_settings.for_core(core).logging.as_dict())

    async def post_logging(request: Request) -> Response:
        changes = await _object(request)
        settings = runtime_settings.for_core(core).logging
        return json_response(settings.update(changes, _wrong_kind, _unknown_log_format))

    app.add_api_route("/v2/logging", get_logging, methods=["GET"])
    app.add_api_route("/v2/logging", post_logging, methods=["POST"])
