"""The Python backend: Triton's ``model.py`` API, run in process."""

from server.backends.python.backend import create_backend

__all__ = ["create_backend"]
