"""The repository, statistics, shared-memory, trace and logging rpcs of
inference.GRPCInferenceService."""

from __future__ import annotations

from typing import Any

import grpc
from google.protobuf import json_format

from server import runtime_settings
from server.core import Core
from server.errors import unsupported
from server.grpc.errors import rpc
from server.protocol.generated import grpc_service_pb2 as pb

_NAMED_REPOSITORY = "'repository_name' specification is not supported"


class ControlRpcs:
    core: Core

    # --- configuration and statistics --------------------------------------------------
    @rpc
    async def ModelConfig(self, request: Any, context: grpc.aio.ServicerContext) -> Any:
        response = pb.ModelConfigResponse()
        response.config.CopyFrom(self.core.model_config_message(request.name, request.version))
        return response

    @rpc
    async def ModelStatistics(self, request: Any, context: grpc.aio.ServicerContext) -> Any:
        stats = self.core.statistics(request.name, request.version)
        return json_format.ParseDict(
            stats, pb.ModelStatisticsResponse(), ignore_unknown_fields=True
        )

    # --- model repository ---------------------------------------------------------------
    @rpc
    async def RepositoryIndex(self, request: Any, context: grpc.aio.ServicerContext) -> Any:
        if request.repository_name:
            raise unsupported(_NAMED_REPOSITORY)
        entry = pb.RepositoryIndexResponse.ModelIndex
        rows = self.core.repository_index(request.ready)
        return pb.RepositoryIndexResponse(models=[entry(**row) for row in rows])

    @rpc
    async def RepositoryModelLoad(self, request: Any, context: grpc.aio.ServicerContext) -> Any:
        if request.repository_name:
            raise unsupported(_NAMED_REPOSITORY)
        await self.core.load_model(request.model_name, _repository_parameters(request.parameters))
        return pb.RepositoryModelLoadResponse()

    @rpc
    async def RepositoryModelUnload(self, request: Any, context: grpc.aio.ServicerContext) -> Any:
        if request.repository_name:
            raise unsupported(_NAMED_REPOSITORY)
        await self.core.unload_model(request.model_name, _repository_parameters(request.parameters))
        return pb.RepositoryModelUnloadResponse()

    # --- shared memory ----------------------------------------------------------------
    @rpc
    async def SystemSharedMemoryStatus(
        self, request: Any, context: grpc.aio.ServicerContext
    ) -> Any:
        response = pb.SystemSharedMemoryStatusResponse()
        for region in self.core.shm.system_status(request.name):
            response.regions[region["name"]].CopyFrom(
                pb.SystemSharedMemoryStatusResponse.RegionStatus(**region)
            )
        return response

    @rpc
    async def SystemSharedMemoryRegister(
        self, request: Any, context: grpc.aio.ServicerContext
    ) -> Any:
        self.core.shm.register_system(request.name, request.key, request.offset, request.byte_size)
        return pb.SystemSharedMemoryRegisterResponse()

    @rpc
    async def SystemSharedMemoryUnregister(
        self, request: Any, context: grpc.aio.ServicerContext
    ) -> Any:
        self.core.shm.unregister_system(request.name)
        return pb.SystemSharedMemoryUnregisterResponse()

    @rpc
    async def CudaSharedMemoryStatus(self, request: Any, context: grpc.aio.ServicerContext) -> Any:
        response = pb.CudaSharedMemoryStatusResponse()
        for region in self.core.shm.cuda_status(request.name):
            response.regions[region["name"]].CopyFrom(
                pb.CudaSharedMemoryStatusResponse.RegionStatus(**region)
            )
        return response

    @rpc
    async def CudaSharedMemoryRegister(
        self, request: Any, context: grpc.aio.ServicerContext
    ) -> Any:
        self.core.shm.register_cuda(
            request.name, request.raw_handle, request.device_id, request.byte_size
        )
        return pb.CudaSharedMemoryRegisterResponse()

    @rpc
    async def CudaSharedMemoryUnregister(
        self, request: Any, context: grpc.aio.ServicerContext
    ) -> Any:
        self.core.shm.unregister_cuda(request.name)
        return pb.CudaSharedMemoryUnregisterResponse()

    # --- trace and logging ------------------------------------------------------------
    @rpc
    async def TraceSetting(self, request: Any, context: grpc.aio.ServicerContext) -> Any:
        runtime_settings.check_trace_model(self.core, request.model_name)
        trace = runtime_settings.for_core(self.core).trace
        if request.settings:
            # An empty value list clears the setting, as JSON null does over HTTP.
            changes = {key: list(value.value) or None for key, value in request.settings.items()}
            current = trace.update(changes, request.model_name)
        else:
            current = trace.get(request.model_name)
        response = pb.TraceSettingResponse()
        for key, value in current.items():
            response.settings[key].value.extend(value if isinstance(value, list) else [value])
        return response

    @rpc
    async def LogSettings(self, request: Any, context: grpc.aio.ServicerContext) -> Any:
        log = runtime_settings.for_core(self.core).logging
        if request.settings:
            changes: dict[str, Any] = {}
            for key, value in request.settings.items():
                which = value.WhichOneof("parameter_choice")
                changes[key] = getattr(value, which) if which else None
            current = log.update(changes)
        else:
            current = log.as_dict()
        response = pb.LogSettingsResponse()
        for key, value in current.items():
            setting = response.settings[key]
            if isinstance(value, bool):
                setting.bool_param = value
            elif isinstance(value, int):
                setting.uint32_param = value
            else:
                setting.string_param = value
        return response


def _repository_parameters(params: Any) -> dict[str, Any]:
    result: dict[str, Any] = {}
    for key, param in params.items():
        which = param.WhichOneof("parameter_choice")
        result[key] = getattr(param, which) if which else None
    return result
