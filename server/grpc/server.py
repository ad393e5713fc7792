"""Start the gRPC front end on the running event loop."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import grpc

from server.cli import Settings
from server.core import Core
from server.grpc.health import HealthServicer
from server.grpc.listener import GrpcListener, method_table
from server.grpc.servicer import InferenceServicer
from server.protocol.generated import (
    grpc_service_pb2,
    grpc_service_pb2_grpc,
    health_pb2,
    health_pb2_grpc,
)

# Triton's limit: a tensor as large as a protobuf message can carry.
MAX_MESSAGE_BYTES = 2**31 - 1

_COMPRESSION = {
    "none": None,
    "low": grpc.Compression.Deflate,
    "medium": grpc.Compression.Gzip,
    "high": grpc.Compression.Gzip,
}


def server_options(settings: Settings) -> list[tuple[str, Any]]:
    return [
        ("grpc.max_send_message_length", MAX_MESSAGE_BYTES),
        ("grpc.max_receive_message_length", MAX_MESSAGE_BYTES),
        ("grpc.keepalive_time_ms", settings.grpc_keepalive_time),
        ("grpc.keepalive_timeout_ms", settings.grpc_keepalive_timeout),
        ("grpc.keepalive_permit_without_calls", int(settings.grpc_keepalive_permit_without_calls)),
        ("grpc.http2.max_pings_without_data", settings.grpc_http2_max_pings_without_data),
        (
            "grpc.http2.min_recv_ping_interval_without_data_ms",
            settings.grpc_http2_min_recv_ping_interval_without_data,
        ),
        ("grpc.http2.max_ping_strikes", settings.grpc_http2_max_ping_strikes),
        ("grpc.so_reuseport", 0),
    ]


def listen_address(address: str, port: int) -> str:
    host = address[len("ipv6:") :] if address.startswith("ipv6:") else address
    if ":" in host and not host.startswith("["):
        host = f"[{host}]"
    return f"{host}:{port}"


def credentials(settings: Settings) -> grpc.ServerCredentials:
    def read(path: str, flag: str) -> bytes:
        if not path:
            raise ValueError(f"--grpc-use-ssl requires {flag}")
        return Path(path).read_bytes()

    key = read(settings.grpc_server_key, "--grpc-server-key")
    cert = read(settings.grpc_server_cert, "--grpc-server-cert")
    root = (
        read(settings.grpc_root_cert, "--grpc-root-cert") if settings.grpc_use_ssl_mutual else None
    )
    return grpc.ssl_server_credentials(
        [(key, cert)], root_certificates=root, require_client_auth=settings.grpc_use_ssl_mutual
    )


async def start(core: Core, settings: Settings) -> tuple[Any, int]:
    """Serve GRPCInferenceService and grpc.health.v1.Health. Plaintext ports are served by
    the listener in ``server.grpc.listener``; TLS ports by grpcio's asyncio server."""
    compression = _COMPRESSION.get(settings.grpc_infer_response_compression_level)
    inference = InferenceServicer(core, compression)
    health = HealthServicer(core)
    if settings.grpc_use_ssl or settings.grpc_use_ssl_mutual:
        return await _start_grpcio(inference, health, settings)
    services = [
        (grpc_service_pb2.DESCRIPTOR.services_by_name["GRPCInferenceService"], inference),
        (health_pb2.DESCRIPTOR.services_by_name["Health"], health),
    ]
    listener = GrpcListener(
        method_table(services),
        keepalive_time_ms=settings.grpc_keepalive_time,
        keepalive_timeout_ms=settings.grpc_keepalive_timeout,
        keepalive_permit_without_calls=settings.grpc_keepalive_permit_without_calls,
        max_pings_without_data=settings.grpc_http2_max_pings_without_data,
        min_recv_ping_interval_without_data_ms=(
            settings.grpc_http2_min_recv_ping_interval_without_data
        ),
        max_ping_strikes=settings.grpc_http2_max_ping_strikes,
    )
    from server.app import bind_socket

    sock = bind_socket(settings.grpc_address, settings.grpc_port)
    await listener.start(sock)
    return listener, sock.getsockname()[1]


async def _start_grpcio(
    inference: InferenceServicer, health: HealthServicer, settings: Settings
) -> tuple[grpc.aio.Server, int]:
    server = grpc.aio.server(options=server_options(settings))
    grpc_service_pb2_grpc.add_GRPCInferenceServiceServicer_to_server(inference, server)
    health_pb2_grpc.add_HealthServicer_to_server(health, server)
    address = listen_address(settings.grpc_address, settings.grpc_port)
    port = server.add_secure_port(address, credentials(settings))
    await server.start()
    return server, port
