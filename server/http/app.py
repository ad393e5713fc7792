"""KServe v2 HTTP routes with Triton's extensions. Each handler decodes, calls the core,
and encodes; errors go through the one table in ``server.http.errors``."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable
from typing import Any

from fastapi import FastAPI, Request
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.responses import Response

from server.core import Core
from server.errors import Code, ServerError, internal, unsupported
from server.http import compression
from server.http.errors import error_response, status_of
from server.http.server import Reply
from server.http.server import Request as HttpRequest
from server.protocol import json_errors
from server.protocol.http_codec import (
    decode_infer_request,
    decode_raw_request,
    encode_infer_response,
    header_length,
    parse_json,
)
from server.repository.manager import parse_version

log = logging.getLogger(__name__)

JSON = "application/json"
HEADER_LENGTH = "inference-header-content-length"


def json_response(payload: Any, status: int = 200) -> Response:
    """A JSON body written as every route writes it (``json_errors.dumps``)."""
    return Response(json_errors.dumps(payload), status_code=status, media_type=JSON)


def _empty(ok: bool) -> Response:
    return Response(b"", status_code=200 if ok else 400, media_type="text/plain")


def _version(version: str | None) -> str:
    if version is None or version == "":
        return ""
    # Triton's route only matches digits; anything else is not a route at all.
    if not version.isdigit():
        raise StarletteHTTPException(404, "Not Found")
    return str(parse_version(version))


def create_app(
    core: Core,
    *,
    max_input_size: int = 64 * 1024 * 1024,
    extra_routes: Callable[[FastAPI, Core], None] | None = None,
) -> InferenceApp:
    app = InferenceApp(
        title="Triton-compatible inference server", docs_url=None, redoc_url=None, openapi_url=None
    )

    @app.exception_handler(ServerError)
    async def _server_error(_: Request, exc: ServerError) -> Response:
        return error_response(exc)

    @app.exception_handler(Exception)
    async def _unexpected(_: Request, exc: Exception) -> Response:
        # A bug must still answer in Triton's error shape, which clients parse.
        log.exception("unexpected error while handling a request")
        return json_response({"error": f"internal error: {exc}"}, 500)

    @app.exception_handler(_UnsupportedEncoding)
    async def _unsupported_encoding(_: Request, exc: _UnsupportedEncoding) -> Response:
        return error_response(exc.error, {"accept-encoding": compression.ACCEPT_ENCODING})

    @app.exception_handler(StarletteHTTPException)
    async def _http_error(_: Request, exc: StarletteHTTPException) -> Response:
        return json_response({"error": exc.detail}, exc.status_code)

    endpoint = InferEndpoint(core, max_input_size)

    async def read_raw_body(request: Request) -> bytes:
        declared = request.headers.get("content-length")
        if declared is not None and declared.isdigit() and int(declared) > max_input_size:
            raise compression.too_large(int(declared), max_input_size)
        chunks: list[bytes] = []
        size = 0
        async for chunk in request.stream():
            size += len(chunk)
            if size > max_input_size:
                raise compression.too_large(size, max_input_size)
            chunks.append(chunk)
        return b"".join(chunks)

    async def read_body(request: Request) -> bytes:
        body = await read_raw_body(request)
        encoding = request.headers.get("content-encoding")
        if encoding:
            try:
                body = compression.decompress(body, encoding, max_input_size)
            except ServerError as exc:
                if exc.code.name == "UNSUPPORTED":
                    raise _UnsupportedEncoding(exc) from None
                raise
        return body

    async def json_body(request: Request) -> Any:
        body = await read_body(request)
        return parse_json(body) if body else {}

    # --- health and metadata ------------------------------------------------------
    @app.get("/v2/health/live")
    async def live() -> Response:
        if core.exiting:
            return json_response({"error": "Server exiting"}, 503)
        return _empty(core.live())

    @app.get("/v2/health/ready")
    async def ready() -> Response:
        if core.exiting:
            return json_response({"error": "Server exiting"}, 503)
        return _empty(core.ready())

    @app.get("/v2")
    async def server_metadata() -> Response:
        return json_response(core.server_metadata())

    async def model_metadata(model: str, version: str | None = None) -> Response:
        return json_response(core.model_metadata(model, _version(version)))

    async def model_ready(model: str, version: str | None = None) -> Response:
        try:
            ready = core.model_ready(model, _version(version))
        except ServerError:
            ready = False
        if ready:
            return _empty(True)
        return json_response({"error": "Model version not ready"}, 400)

    async def model_config(model: str, version: str | None = None) -> Response:
        return json_response(core.model_config(model, _version(version)))

    async def model_stats(model: str, version: str | None = None) -> Response:
        return json_response(core.statistics(model, _version(version)))

    async def infer(request: Request, model: str, version: str | None = None) -> Response:
        """The route for ASGI servers, and for infer paths the listener does not match itself
        (percent-encoded or absolute-form); the listener calls ``answer_request`` directly."""
        body = await read_raw_body(request)
        handler = asyncio.current_task()
        assert handler is not None
        watcher = asyncio.ensure_future(_cancel_on_disconnect(request, handler))
        try:
            reply = await endpoint.answer(body, request.headers.get, model, version)
        except asyncio.CancelledError:
            if not watcher.done() or watcher.cancelled():
                raise
            # The client went away: the scheduler has dropped the request; nobody reads this.
            uncancel = getattr(handler, "uncancel", None)
            if uncancel is not None:
                uncancel()
            reply = endpoint.error(ServerError(Code.CANCELLED, "Request was cancelled"))
        finally:
            watcher.cancel()
        return Response(
            reply.body,
            status_code=reply.status,
            media_type=reply.content_type.decode("latin-1"),
            headers={n.decode("latin-1"): v.decode("latin-1") for n, v in reply.headers},
        )

    app.infer_endpoint = endpoint
    for suffix, handler, method in (
        ("", model_metadata, "GET"),
        ("/ready", model_ready, "GET"),
        ("/config", model_config, "GET"),
        ("/stats", model_stats, "GET"),
        ("/infer", infer, "POST"),
    ):
        app.add_api_route(f"/v2/models/{{model}}{suffix}", handler, methods=[method])
        app.add_api_route(
            f"/v2/models/{{model}}/versions/{{version}}{suffix}", handler, methods=[method]
        )

    @app.get("/v2/models/stats")
    async def all_stats() -> Response:
        return json_response(core.statistics())

    # FastAPI matches routes in order; '/v2/models/stats' must win over '/v2/models/{model}'.
    app.router.routes.insert(0, app.router.routes.pop())

    # --- model repository ---------------------------------------------------------
    @app.post("/v2/repository/index")
    async def repository_index(request: Request) -> Response:
        body = await json_body(request)
        ready_only = body.get("ready", False) if isinstance(body, dict) else False
        if not isinstance(ready_only, bool):
            raise internal("attempt to access JSON non-boolean as boolean")
        return json_response(core.repository_index(ready_only))

    @app.post("/v2/repository/models/{model}/load")
    async def load(request: Request, model: str) -> Response:
        body = await json_body(request)
        params = body.get("parameters", {}) if isinstance(body, dict) else {}
        if not isinstance(params, dict):
            raise internal("attempt to get members for non-object")
        # Triton reads every parameter of a load as a string, whatever its key.
        if any(not isinstance(value, str) for value in params.values()):
            raise internal("attempt to access JSON non-string as string")
        await core.load_model(model, params)
        return Response(b"", status_code=200)

    @app.post("/v2/repository/models/{model}/unload")
    async def unload(request: Request, model: str) -> Response:
        raw = await read_body(request)
        try:
            body = parse_json(raw) if raw else {}
        except ServerError:
            body = {}  # Triton unloads the model whatever the body holds, even unparsable
        params = body.get("parameters", {}) if isinstance(body, dict) else {}
        await core.unload_model(model, params if isinstance(params, dict) else {})
        return Response(b"", status_code=200)

    async def named_repository(repository: str, model: str) -> Response:
        raise unsupported("'repository_name' specification is not supported")

    app.add_api_route(
        "/v2/repository/{repository}/models/{model}/load", named_repository, methods=["POST"]
    )
    app.add_api_route(
        "/v2/repository/{repository}/models/{model}/unload", named_repository, methods=["POST"]
    )

    if extra_routes is not None:
        extra_routes(app, core)
    return app


class InferEndpoint:
    """One inference over HTTP: raw body and request headers in, a complete reply out.
    Shared by the HTTP listener's direct path and the FastAPI route."""

    def __init__(self, core: Core, max_input_size: int) -> None:
        self.core = core
        self.max_input_size = max_input_size

    async def answer(
        self,
        body: bytes | bytearray,
        header: Callable[[str], str | None],
        model: str,
        version: str | None,
    ) -> Reply:
        try:
            return await self._answer(body, header, model, version)
        except (ServerError, _UnsupportedEncoding, StarletteHTTPException) as exc:
            return self._failed(exc)

    async def answer_request(self, request: HttpRequest, model: str, version: str | None) -> Reply:
        """The HTTP listener's entry point: ``answer`` written out, one coroutine fewer on
        the hot path."""
        try:
            return await self._answer(
                request.body(writable=True), _header_reader(request), model, version
            )
        except (ServerError, _UnsupportedEncoding, StarletteHTTPException) as exc:
            return self._failed(exc)

    def _failed(self, exc: ServerError | _UnsupportedEncoding | StarletteHTTPException) -> Reply:
        if isinstance(exc, ServerError):
            return self.error(exc)
        if isinstance(exc, _UnsupportedEncoding):
            return self.error(
                exc.error, [(b"accept-encoding", compression.ACCEPT_ENCODING.encode())]
            )
        return Reply(exc.status_code, json_errors.dumps({"error": exc.detail}))

    def too_large(self, request: HttpRequest) -> Reply:
        return self.error(compression.too_large(request.too_large, self.max_input_size))

    @staticmethod
    def error(exc: ServerError, headers: list[tuple[bytes, bytes]] | None = None) -> Reply:
        return Reply(
            status_of(exc.code), json_errors.dumps({"error": exc.message}), headers=headers
        )

    async def _answer(
        self,
        body: bytes | bytearray,
        header: Callable[[str], str | None],
        model: str,
        version: str | None,
    ) -> Reply:
        core = self.core
        encoding = header("content-encoding")
        if encoding:
            try:
                body = await _maybe_off_loop(
                    len(body), compression.decompress, body, encoding, self.max_input_size
                )
            except ServerError as exc:
                if exc.code is Code.UNSUPPORTED:
                    raise _UnsupportedEncoding(exc) from None
                raise
        json_length = header_length(header(HEADER_LENGTH), len(body))
        version = _version(version)
        if json_length == 0 or (json_length is None and not body):
            loaded_view = core.model_view(model, version)
            infer_request = decode_raw_request(body, loaded_view, version)
        else:
            infer_request = decode_infer_request(body, json_length, model, version)
        response = await core.infer(infer_request)
        payload, response_json_length = encode_infer_response(response, infer_request)
        headers: list[tuple[bytes, bytes]] = []
        media = _JSON
        if response_json_length is not None:
            headers.append((b"inference-header-content-length", b"%d" % response_json_length))
            media = _OCTETS
        chosen = compression.choose_encoding(header("accept-encoding"))
        if chosen != "identity":
            payload = await _maybe_off_loop(len(payload), compression.compress, payload, chosen)
            headers.append((b"content-encoding", chosen.encode()))
        return Reply(200, payload, media, headers)


# zlib lets go of the interpreter lock while it works on a buffer: (de)compressing large
# bodies on a worker thread lets the event loop serve other connections meanwhile. Small
# bodies stay on the loop, where the hand-off would cost more than the work.
_OFF_LOOP_BYTES = 256 * 1024


async def _maybe_off_loop(size: int, work: Callable[..., bytes], *args: Any) -> bytes:
    if size < _OFF_LOOP_BYTES:
        return work(*args)
    return await asyncio.get_running_loop().run_in_executor(None, work, *args)


def _header_reader(request: HttpRequest) -> Callable[[str], str | None]:
    def read(name: str) -> str | None:
        return request.header(name.encode("latin-1"))

    return read


_JSON = b"application/json"
_OCTETS = b"application/octet-stream"


class InferenceApp(FastAPI):
    """The FastAPI application, with the inference endpoint the HTTP listener calls
    directly (``server.http.server``); the infer route serves other ASGI servers."""

    infer_endpoint: InferEndpoint | None = None


async def _cancel_on_disconnect(request: Request, handler: asyncio.Task[Any]) -> None:
    """Cancel ``handler`` when the client disconnects, so a queued request is withdrawn
    instead of being executed for nobody. The body is already read at this point, so the
    next ASGI message is the disconnect."""
    while True:
        message = await request.receive()
        if message["type"] == "http.disconnect":
            handler.cancel()
            return


class _UnsupportedEncoding(Exception):
    def __init__(self, error: ServerError) -> None:
        self.error = error


Handler = Callable[..., Awaitable[Response]]
