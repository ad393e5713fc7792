"""Start the gRPC front end on the running event loop."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import grpc

from server.cli import Settings
from server.core import Core
from server.grpc.health import HealthServicer
from server.grpc.servicer import InferenceServicer
from server.protocol.generated import grpc_service_pb2_grpc, health_pb2_grpc

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


async def start(core: Core, settings: Settings) -> tuple[grpc.aio.Server, int]:
    server = grpc.aio.server(options=server_options(settings))
    compression = _COMPRESSION.get(settings.grpc_infer_response_compression_level)
    grpc_service_pb2_grpc.add_GRPCInferenceServiceServicer_to_server(
        InferenceServicer(core, compression), server
    )
    health_pb2_grpc.add_HealthServicer_to_server(HealthServicer(core), server)
    address = listen_address(settings.grpc_address, settings.grpc_port)
    if settings.grpc_use_ssl or settings.grpc_use_ssl_mutual:
        port = server.add_secure_port(address, credentials(settings))
    else:
        port = server.add_insecure_port(address)
    await server.start()
    return server, port
