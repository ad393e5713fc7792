"""Request and response compression as Triton negotiates it (gzip and deflate/zlib)."""

from __future__ import annotations

import gzip
import zlib

from server.errors import ServerError, invalid_arg, unsupported

ACCEPT_ENCODING = "gzip, deflate"


def decompress(body: bytes, encoding: str, limit: int) -> bytes:
    """Triton matches the encoding names exactly and treats a body that does not inflate as
    empty (which then reads as a raw binary request), rather than failing."""
    encoding = encoding.strip()
    if encoding in ("", "identity"):
        return body
    if encoding not in ("gzip", "deflate"):
        raise unsupported("Unsupported compression type")
    wbits = 16 + zlib.MAX_WBITS if encoding == "gzip" else zlib.MAX_WBITS
    decompressor = zlib.decompressobj(wbits)
    try:
        out = decompressor.decompress(body, limit + 1)
    except zlib.error:
        return b""
    if len(out) > limit:
        raise too_large(len(out), limit)
    return out


def too_large(size: int, limit: int) -> ServerError:
    return invalid_arg(
        f"Request JSON size of {size} bytes exceeds the maximum allowed value of {limit} bytes. "
        "Use --http-max-input-size to increase the limit."
    )


def choose_encoding(accept: str | None) -> str:
    """The highest-weighted of identity, deflate and gzip in an Accept-Encoding header."""
    if not accept:
        return "identity"
    best, best_q = "identity", -1.0
    for part in accept.split(","):
        token, _, params = part.strip().partition(";")
        token = token.strip().lower()
        if token not in ("identity", "gzip", "deflate"):
            continue
        q = 1.0
        params = params.strip()
        if params.startswith("q="):
            try:
                q = float(params[2:])
            except ValueError:
                continue
        if q > best_q:
            best, best_q = token, q
    return best if best_q > 0 else "identity"


def compress(body: bytes, encoding: str) -> bytes:
    if encoding == "gzip":
        return gzip.compress(body, compresslevel=6, mtime=0)
    if encoding == "deflate":
        return zlib.compress(body)
    return body
