"""Socket settings shared by the HTTP and gRPC listeners."""

from __future__ import annotations

import asyncio
import socket
from typing import Any


def no_delay(transport: Any) -> None:
    """Send small writes at once (TCP_NODELAY). uvloop sets it on accepted connections;
    asyncio's own loop does not, and Nagle's algorithm then holds a write back until the
    previous one is acknowledged, up to the peer's delayed-ACK time (about 40 ms)."""
    sock = _tcp_socket(transport)
    if sock is not None:
        try:
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        except OSError:
            pass


def _tcp_socket(transport: Any) -> Any:
    sock = transport.get_extra_info("socket")
    if sock is None or sock.family not in (socket.AF_INET, socket.AF_INET6):
        return None
    return sock


def quick_ack_socket(transport: Any) -> Any:
    """The transport's TCP socket where the system has TCP_QUICKACK (Linux), else None."""
    if not hasattr(socket, "TCP_QUICKACK"):
        return None
    return _tcp_socket(transport)


def quick_ack(sock: Any) -> None:
    """Acknowledge what has arrived now rather than after the delayed-ACK timer (about 40
    ms). A client that leaves Nagle's algorithm on (tritonclient's HTTP client does) holds
    the last small piece of a large body back until everything before it is acknowledged,
    so a receiver waiting for that piece waits for its own delayed ACK. Linux clears the
    setting again by itself, so it is set after each read that leaves a body unfinished."""
    try:
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_QUICKACK, 1)
    except OSError:
        pass


class WriteFlow:
    """Write-side flow control for an ``asyncio.Protocol``: the transport calls
    ``pause_writing`` and ``resume_writing`` around its high-water mark, and ``drain`` waits
    while writes are paused and the transport is open. ``stop_flow`` (from
    ``connection_lost``) wakes every waiter."""

    transport: Any
    write_paused = False
    _drained: asyncio.Future[None] | None = None

    def pause_writing(self) -> None:
        self.write_paused = True

    def resume_writing(self) -> None:
        self.write_paused = False
        self._wake_writers()

    def stop_flow(self) -> None:
        self.write_paused = False
        self._wake_writers()

    def _wake_writers(self) -> None:
        if self._drained is not None and not self._drained.done():
            self._drained.set_result(None)
        self._drained = None

    async def drain(self) -> None:
        if self.write_paused and not self.transport.is_closing():
            if self._drained is None:
                self._drained = asyncio.get_running_loop().create_future()
            await self._drained
