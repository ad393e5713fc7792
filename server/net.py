"""Socket settings shared by the HTTP and gRPC listeners."""

from __future__ import annotations

import socket
from typing import Any


def no_delay(transport: Any) -> None:
    """Send small writes at once (TCP_NODELAY). uvloop sets it on accepted connections;
    asyncio's own loop does not, and Nagle's algorithm then holds a write back until the
    previous one is acknowledged, up to the peer's delayed-ACK time (about 40 ms)."""
    sock = transport.get_extra_info("socket")
    if sock is not None and sock.family in (socket.AF_INET, socket.AF_INET6):
        try:
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        except OSError:
            pass
