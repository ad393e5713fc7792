"""Start the gRPC front end on the running event loop."""

from __future__ import annotations

import ssl
from pathlib import Path

import grpc

from server.cli import Settings
from server.core import Core
from server.grpc.health import HealthServicer
from server.grpc.listener import GrpcListener, method_table
from server.grpc.servicer import InferenceServicer
from server.protocol.generated import grpc_service_pb2, health_pb2

_COMPRESSION = {
    "none": None,
    "low": grpc.Compression.Deflate,
    "medium": grpc.Compression.Gzip,
    "high": grpc.Compression.Gzip,
}


def tls_context(settings: Settings) -> ssl.SSLContext:
    """The server's TLS context from Triton's flags; ALPN offers h2, as gRPC requires."""

    def path(value: str, flag: str) -> str:
        if not value:
            raise ValueError(f"--grpc-use-ssl requires {flag}")
        if not Path(value).is_file():
            raise ValueError(f"{flag}: no such file: {value}")
        return value

    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.load_cert_chain(
        path(settings.grpc_server_cert, "--grpc-server-cert"),
        path(settings.grpc_server_key, "--grpc-server-key"),
    )
    if settings.grpc_use_ssl_mutual:
        context.load_verify_locations(path(settings.grpc_root_cert, "--grpc-root-cert"))
        context.verify_mode = ssl.CERT_REQUIRED
    context.set_alpn_protocols(["h2"])
    return context


async def start(core: Core, settings: Settings) -> tuple[GrpcListener, int]:
    """Serve GRPCInferenceService and grpc.health.v1.Health on the gRPC port."""
    from server.app import StartError, bind_socket

    compression = _COMPRESSION.get(settings.grpc_infer_response_compression_level)
    services = [
        (
            grpc_service_pb2.DESCRIPTOR.services_by_name["GRPCInferenceService"],
            InferenceServicer(core, compression),
        ),
        (health_pb2.DESCRIPTOR.services_by_name["Health"], HealthServicer(core)),
    ]
    try:
        use_tls = settings.grpc_use_ssl or settings.grpc_use_ssl_mutual
        tls = tls_context(settings) if use_tls else None
    except (ValueError, ssl.SSLError) as exc:
        raise StartError(f"failed to start GRPC service: {exc}") from None
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
    sock = bind_socket(settings.grpc_address, settings.grpc_port, "GRPC")
    await listener.start(sock, tls)
    return listener, sock.getsockname()[1]
