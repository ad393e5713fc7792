"""One error type for the whole server, with Triton's error codes.

Front ends map the code to their own status (HTTP status, gRPC code) through a single table
each; everything below the front ends raises ``ServerError`` and nothing else.
"""

from __future__ import annotations

import enum


class Code(enum.Enum):
    INVALID_ARG = "INVALID_ARG"
    NOT_FOUND = "NOT_FOUND"
    UNAVAILABLE = "UNAVAILABLE"
    UNSUPPORTED = "UNSUPPORTED"
    INTERNAL = "INTERNAL"
    ALREADY_EXISTS = "ALREADY_EXISTS"
    CANCELLED = "CANCELLED"
    UNKNOWN = "UNKNOWN"


class ServerError(Exception):
    """An error whose message is shown to the client as is."""

    __slots__ = ("code", "message")

    def __init__(self, code: Code, message: str) -> None:
        super().__init__(message)
        self.code = code
        self.message = message

    def __repr__(self) -> str:
        return f"ServerError({self.code.name}, {self.message!r})"


def invalid_arg(message: str) -> ServerError:
    return ServerError(Code.INVALID_ARG, message)


def not_found(message: str) -> ServerError:
    return ServerError(Code.NOT_FOUND, message)


def unavailable(message: str) -> ServerError:
    return ServerError(Code.UNAVAILABLE, message)


def unsupported(message: str) -> ServerError:
    return ServerError(Code.UNSUPPORTED, message)


def internal(message: str) -> ServerError:
    return ServerError(Code.INTERNAL, message)
