"""The one table from error codes to HTTP status, and Triton's error body."""

from __future__ import annotations

from starlette.responses import Response

from server.errors import Code, ServerError
from server.protocol import json_errors

HTTP_STATUS = {
    Code.INTERNAL: 500,
    Code.NOT_FOUND: 404,
    Code.UNAVAILABLE: 503,
    Code.UNSUPPORTED: 501,
}


def status_of(code: Code) -> int:
    return HTTP_STATUS.get(code, 400)


def error_response(error: ServerError, headers: dict[str, str] | None = None) -> Response:
    return Response(
        json_errors.dumps({"error": error.message}),
        status_code=status_of(error.code),
        media_type="application/json",
        headers=headers,
    )
