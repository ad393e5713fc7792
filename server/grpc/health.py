"""grpc.health.v1.Health: SERVING exactly when the server is ready, as Triton reports it."""

from __future__ import annotations

from typing import Any

import grpc

from server.core import Core
from server.protocol.generated import health_pb2, health_pb2_grpc


class HealthServicer(health_pb2_grpc.HealthServicer):
    def __init__(self, core: Core) -> None:
        self.core = core

    async def Check(self, request: Any, context: grpc.aio.ServicerContext) -> Any:
        status = health_pb2.HealthCheckResponse
        return status(status=status.SERVING if self.core.ready() else status.NOT_SERVING)
