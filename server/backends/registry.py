"""Backends by name, imported lazily so a missing framework affects only its own models."""

from __future__ import annotations

import importlib
import threading

from server.backends.base import Backend
from server.errors import unavailable

_MODULES = {
    "onnxruntime": "server.backends.onnxruntime",
    "python": "server.backends.python",
    "pytorch": "server.backends.pytorch",
}
_cache: dict[str, Backend] = {}
_lock = threading.Lock()


def get_backend(name: str) -> Backend:
    with _lock:
        if name in _cache:
            return _cache[name]
        module_name = _MODULES.get(name)
        if module_name is None:
            raise unavailable(f"unable to find backend '{name}': this server does not provide it")
        try:
            module = importlib.import_module(module_name)
        except ImportError as exc:
            raise unavailable(f"backend '{name}' is not available: {exc}") from None
        backend = module.create_backend()
        _cache[name] = backend
        return backend
