"""The per-model import packages of the Python backend, while other threads import."""

from __future__ import annotations

import sys
import threading
import types
from collections.abc import Iterator
from pathlib import Path

import pytest

from server.backends.python import imports


@pytest.fixture
def busy_imports() -> Iterator[None]:
    """Another thread adding and removing modules all the time, with the interpreter
    switching threads as often as it can: models load side by side on executor threads."""
    interval = sys.getswitchinterval()
    sys.setswitchinterval(1e-6)
    stop = threading.Event()

    def churn() -> None:
        names = [f"_busy_import_{i}" for i in range(50)]
        while not stop.is_set():
            for name in names:
                if sys.modules.pop(name, None) is None:
                    sys.modules[name] = types.ModuleType(name)

    thread = threading.Thread(target=churn, daemon=True)
    thread.start()
    try:
        yield
    finally:
        stop.set()
        thread.join()
        sys.setswitchinterval(interval)
        for name in [n for n in list(sys.modules) if n.startswith("_busy_import_")]:
            del sys.modules[name]


@pytest.mark.usefixtures("busy_imports")
def test_a_model_package_is_released_while_other_threads_import(tmp_path: Path) -> None:
    (tmp_path / "helper.py").write_text("VALUE = 1\n")
    for index in range(1000):
        package = f"_released_model_{index}"
        owner = imports.prepare(package, [str(tmp_path)])
        sys.modules[f"{package}.helper"] = types.ModuleType(f"{package}.helper")
        imports.release(owner.package)
        assert package not in sys.modules
        assert f"{package}.helper" not in sys.modules
    assert str(tmp_path) not in sys.path
