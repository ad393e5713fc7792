"""glibc malloc thresholds for a server that moves large tensors.

glibc serves a large allocation with its own mmap and, once such a block has been freed,
serves blocks of that size from its heap instead, giving the top of the heap back to the
kernel whenever more than twice that size lies free there. A request carrying a tensor of a
few hundred KiB or more makes several buffers of that size (the received message, the
decoded tensor, the encoded response) and frees them all when it is answered, so every
request grows the heap and the next trim hands it back: the kernel then zeroes and maps each
page again on the next request, and those page faults cost more than the copies themselves
(`bench/large_tensors.py` measures it; the figures are in docs/performance.md).

Fixed thresholds stop that: freed memory up to ``TRIM_THRESHOLD`` stays in the process for
the next request, and blocks of ``MMAP_THRESHOLD`` and more still get their own mapping,
returned as soon as they are freed. A user who sets glibc's own variables
(``MALLOC_TRIM_THRESHOLD_``, ``MALLOC_MMAP_THRESHOLD_``, ``MALLOC_TOP_PAD_``,
``MALLOC_MMAP_MAX_`` or ``glibc.malloc`` tunables in ``GLIBC_TUNABLES``) keeps them, and on
other C libraries nothing is changed.
"""

from __future__ import annotations

import ctypes
import logging
import os
import platform
from collections.abc import Callable, Mapping

log = logging.getLogger(__name__)

MMAP_THRESHOLD = 32 * 1024 * 1024
TRIM_THRESHOLD = 64 * 1024 * 1024

# mallopt's parameter numbers (malloc.h).
_M_TRIM_THRESHOLD = -1
_M_MMAP_THRESHOLD = -3

_GLIBC_VARIABLES = (
    "MALLOC_TRIM_THRESHOLD_",
    "MALLOC_MMAP_THRESHOLD_",
    "MALLOC_TOP_PAD_",
    "MALLOC_MMAP_MAX_",
)


def user_configured(environ: Mapping[str, str]) -> bool:
    """Whether the environment already sets glibc's malloc thresholds."""
    if any(name in environ for name in _GLIBC_VARIABLES):
        return True
    return "glibc.malloc." in environ.get("GLIBC_TUNABLES", "")


def _glibc_mallopt() -> Callable[[int, int], int] | None:
    if platform.libc_ver()[0] != "glibc":
        return None
    try:
        return ctypes.CDLL(None).mallopt  # type: ignore[no-any-return]
    except (OSError, AttributeError):
        return None


def tune(
    environ: Mapping[str, str] | None = None,
    mallopt: Callable[[int, int], int] | None = None,
) -> bool:
    """Set the thresholds unless the user set them; True when they were set."""
    environ = os.environ if environ is None else environ
    if user_configured(environ):
        log.debug("malloc thresholds left as the environment sets them")
        return False
    mallopt = mallopt if mallopt is not None else _glibc_mallopt()
    if mallopt is None:
        return False
    applied = bool(mallopt(_M_MMAP_THRESHOLD, MMAP_THRESHOLD)) and bool(
        mallopt(_M_TRIM_THRESHOLD, TRIM_THRESHOLD)
    )
    log.debug(
        "malloc thresholds: mmap %d, trim %d (%s)",
        MMAP_THRESHOLD,
        TRIM_THRESHOLD,
        "set" if applied else "refused",
    )
    return applied
