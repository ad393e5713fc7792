"""tritonclient's shared-memory helpers, importable where setuptools no longer ships
``pkg_resources`` (tritonclient 2.41 uses it only to locate its own libcshm.so)."""

from __future__ import annotations

import importlib.util
import os
import sys
import types


def _install_resource_lookup() -> None:
    try:
        import pkg_resources  # noqa: F401
    except ImportError:
        module = types.ModuleType("pkg_resources")

        def resource_filename(package: str, resource: str) -> str:
            spec = importlib.util.find_spec(package)
            if spec is None or spec.origin is None:
                raise ImportError(package)
            return os.path.join(os.path.dirname(spec.origin), resource)

        module.resource_filename = resource_filename  # type: ignore[attr-defined]
        sys.modules["pkg_resources"] = module


_install_resource_lookup()

import tritonclient.utils.shared_memory as shared_memory  # noqa: E402

__all__ = ["shared_memory"]
