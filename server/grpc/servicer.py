"""inference.GRPCInferenceService: health, metadata and inference. Each handler decodes,
calls the core and encodes; repository, shared-memory, trace and logging rpcs are in
``server.grpc.control``."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from typing import Any

import grpc

from server.core import Core
from server.errors import Code, ServerError
from server.grpc.control import ControlRpcs
from server.grpc.errors import rpc, status_of
from server.protocol import grpc_codec
from server.protocol.generated import grpc_service_pb2 as pb
from server.protocol.generated import grpc_service_pb2_grpc as pb_grpc
from server.types import InferRequest, InferResponse

_FINAL = {grpc_codec.FINAL_RESPONSE: True}
_NOT_FINAL = {grpc_codec.FINAL_RESPONSE: False}
_END = object()


class InferenceServicer(ControlRpcs, pb_grpc.GRPCInferenceServiceServicer):
    # Inference requests are parsed without copying their raw inputs (the listener's
    # ``method_table``).
    request_decoders = {
        "ModelInfer": grpc_codec.parse_infer_request,
        "ModelStreamInfer": grpc_codec.parse_infer_request,
    }

    def __init__(self, core: Core, compression: grpc.Compression | None = None) -> None:
        self.core = core
        self.compression = compression

    # --- health and metadata ------------------------------------------------------------
    @rpc
    async def ServerLive(self, request: Any, context: grpc.aio.ServicerContext) -> Any:
        return pb.ServerLiveResponse(live=self.core.live())

    @rpc
    async def ServerReady(self, request: Any, context: grpc.aio.ServicerContext) -> Any:
        return pb.ServerReadyResponse(ready=self.core.ready())

    @rpc
    async def ModelReady(self, request: Any, context: grpc.aio.ServicerContext) -> Any:
        try:
            ready = self.core.model_ready(request.name, request.version)
        except ServerError as exc:
            # Triton's gRPC answers an unknown model with ready=false, not an error status.
            if exc.code != Code.NOT_FOUND:
                raise
            ready = False
        return pb.ModelReadyResponse(ready=ready)

    @rpc
    async def ServerMetadata(self, request: Any, context: grpc.aio.ServicerContext) -> Any:
        meta = self.core.server_metadata()
        return pb.ServerMetadataResponse(
            name=meta["name"], version=meta["version"], extensions=meta["extensions"]
        )

    @rpc
    async def ModelMetadata(self, request: Any, context: grpc.aio.ServicerContext) -> Any:
        meta = self.core.model_metadata(request.name, request.version)
        tensor = pb.ModelMetadataResponse.TensorMetadata
        return pb.ModelMetadataResponse(
            name=meta["name"],
            versions=meta["versions"],
            platform=meta["platform"],
            inputs=[
                tensor(name=t["name"], datatype=t["datatype"], shape=t["shape"])
                for t in meta["inputs"]
            ],
            outputs=[
                tensor(name=t["name"], datatype=t["datatype"], shape=t["shape"])
                for t in meta["outputs"]
            ],
        )

    # --- inference ----------------------------------------------------------------------
    async def ModelInfer(self, request: Any, context: grpc.aio.ServicerContext) -> Any:
        # Written out rather than wrapped: this is the hot path.
        try:
            response = await self.core.infer(grpc_codec.decode_infer_request(request))
            message = grpc_codec.encode_unary_response(response)
        except ServerError as exc:
            await context.abort(status_of(exc.code), exc.message)
        if self.compression is not None:
            context.set_compression(self.compression)
        return message

    async def ModelStreamInfer(
        self, request_iterator: AsyncIterator[Any], context: grpc.aio.ServicerContext
    ) -> AsyncIterator[Any]:
        """Responses of ordinary models are written in request order; a decoupled model's
        responses are written as they are produced. Errors travel in-band and the stream
        goes on serving."""
        if self.compression is not None:
            context.set_compression(self.compression)
        outbox: asyncio.Queue[Any] = asyncio.Queue()
        tasks: set[asyncio.Task[None]] = set()
        reader = asyncio.create_task(self._read_stream(request_iterator, outbox, tasks))
        try:
            while True:
                item = await outbox.get()
                if item is _END:
                    break
                yield item
            await reader
        finally:
            reader.cancel()
            for task in list(tasks):
                task.cancel()  # a client that went away: the scheduler skips these requests
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await reader

    async def _read_stream(
        self,
        request_iterator: AsyncIterator[Any],
        outbox: asyncio.Queue[Any],
        tasks: set[asyncio.Task[None]],
    ) -> None:
        previous: asyncio.Task[None] | None = None
        try:
            async for message in request_iterator:
                try:
                    request = grpc_codec.decode_infer_request(message)
                    decoupled = self._decoupled(request)
                except ServerError as exc:
                    request, decoupled = None, False
                    error = grpc_codec.encode_stream_error(message.id, exc.message)
                if request is None:
                    task = asyncio.create_task(_after(previous, outbox, error))
                elif decoupled:
                    task = asyncio.create_task(self._stream_decoupled(request, outbox))
                else:
                    task = asyncio.create_task(self._stream_ordered(request, previous, outbox))
                if not decoupled:
                    previous = task
                tasks.add(task)
                task.add_done_callback(tasks.discard)
            while tasks:
                await asyncio.gather(*list(tasks), return_exceptions=True)
        finally:
            outbox.put_nowait(_END)

    def _decoupled(self, request: InferRequest) -> bool:
        loaded = self.core.manager.get(request.model_name, request.model_version)
        return bool(loaded.view is not None and loaded.view.decoupled)

    async def _stream_ordered(
        self, request: InferRequest, previous: asyncio.Task[None] | None, outbox: asyncio.Queue[Any]
    ) -> None:
        try:
            response = await self.core.infer(request)
            item = pb.ModelStreamInferResponse(
                infer_response=grpc_codec.encode_infer_response(response, _FINAL)
            )
        except ServerError as exc:
            item = grpc_codec.encode_stream_error(request.id, exc.message)
        await _after(previous, outbox, item)

    async def _stream_decoupled(self, request: InferRequest, outbox: asyncio.Queue[Any]) -> None:
        empty_final = bool(request.parameters.get(grpc_codec.EMPTY_FINAL_RESPONSE, False))
        final_sent = False
        try:
            async for item in self.core.infer_stream(request):
                if isinstance(item, ServerError):
                    error = grpc_codec.encode_stream_error(request.id, item.message, False)
                    # A model's in-band error names the model (and no version), as in Triton.
                    error.infer_response.model_name = request.model_name
                    outbox.put_nowait(error)
                    continue
                final_sent = final_sent or item.final
                flag = _FINAL if item.final else _NOT_FINAL
                outbox.put_nowait(
                    pb.ModelStreamInferResponse(
                        infer_response=grpc_codec.encode_infer_response(item, flag)
                    )
                )
        except ServerError as exc:
            outbox.put_nowait(grpc_codec.encode_stream_error(request.id, exc.message))
            return
        if empty_final and not final_sent:
            # Triton's empty final response names the model but no version.
            empty = InferResponse(request.model_name, "", [], request.id)
            outbox.put_nowait(
                pb.ModelStreamInferResponse(
                    infer_response=grpc_codec.encode_infer_response(empty, _FINAL)
                )
            )


async def _after(
    previous: asyncio.Task[None] | None, outbox: asyncio.Queue[Any], item: Any
) -> None:
    """Queue ``item`` once the previous ordered response has been queued."""
    if previous is not None and not previous.done():
        with contextlib.suppress(Exception):
            await asyncio.shield(previous)
    outbox.put_nowait(item)
