"""Each loaded ``model.py`` imports its own neighbours.

Triton runs every model instance in a process of its own, appends the model's version
folder and then the model's folder to ``sys.path``, and imports ``<version>.model``: so
``import helper`` in a model finds the ``helper.py`` beside it unless an installed module of
that name comes first, and ``from . import helper`` works too. In one process, two models
that both ship a ``utils.py`` would share whichever was imported first. So each imported
``model.py`` is the ``model`` module of a package of its own whose path is those two
folders, with an ``__import__`` of its own (through the module's ``__builtins__``) that
resolves a top-level name to that package when the regular path does not have it. The
neighbours' own imports go through the same function, so they stay within the model too.
"""

from __future__ import annotations

import builtins
import importlib
import importlib.abc
import importlib.machinery
import importlib.util
import os
import sys
import threading
import types
from collections.abc import Sequence
from typing import Any

_real_import = builtins.__import__
_lock = threading.Lock()
# Package name -> the imports of the model that owns it.
_owners: dict[str, ModelImports] = {}
# Every folder of a loaded model, on sys.path for code that imports by other means.
_folders: dict[str, int] = {}


class ModelImports:
    """The import machinery of one imported ``model.py``."""

    def __init__(self, package: str, folders: Sequence[str], instance: str = "") -> None:
        self.package = package
        self.folders = list(folders)
        # The model instance whose model.py this is, for the messages of calls it makes.
        self.instance = instance
        # Top-level name -> whether it is one of the model's own files.
        self._own: dict[str, bool] = {}
        self.builtins: dict[str, Any] = dict(builtins.__dict__)
        self.builtins["__import__"] = self.import_

    def import_(
        self,
        name: str,
        globals: Any = None,
        locals: Any = None,
        fromlist: Sequence[str] | None = (),
        level: int = 0,
    ) -> types.ModuleType:
        if level == 0 and name:
            top = name.partition(".")[0]
            own = self._own.get(top)
            if own is None:
                own = self._own[top] = self._is_own(top)
            if own:
                inner = f"{self.package}.{name}"
                if fromlist:
                    return _real_import(inner, globals, locals, fromlist, 0)
                _real_import(inner, globals, locals, (), 0)
                return sys.modules[f"{self.package}.{top}"]
        return _real_import(name, globals, locals, fromlist, level)

    def _is_own(self, top: str) -> bool:
        if importlib.machinery.PathFinder.find_spec(top, self.folders) is None:
            return False
        # As with the folders appended to sys.path: an installed module of the name wins
        # (not one a model loaded from its folder through sys.path by other means).
        loaded = sys.modules.get(top)
        if loaded is not None:
            where = os.path.dirname(getattr(loaded, "__file__", None) or "")
            if where not in _folders and os.path.dirname(where) not in _folders:
                return False
        regular = [p for p in sys.path if p not in _folders]
        for finder in sys.meta_path:
            if isinstance(finder, _OwnFilesFinder):
                continue
            if finder is importlib.machinery.PathFinder:
                spec = finder.find_spec(top, regular)
            else:
                find = getattr(finder, "find_spec", None)
                spec = find(top, None) if find is not None else None
            if spec is not None:
                return False
        return True


class _OwnFilesLoader(importlib.machinery.SourceFileLoader):
    """Loads a model's own source file with the model's ``__import__``."""

    def __init__(self, fullname: str, path: str, owner: ModelImports) -> None:
        super().__init__(fullname, path)
        self.owner = owner

    def exec_module(self, module: types.ModuleType) -> None:
        module.__dict__["__builtins__"] = self.owner.builtins
        super().exec_module(module)


class _OwnFilesFinder(importlib.abc.MetaPathFinder):
    """Finds the modules of a model's package in its folders."""

    def find_spec(
        self, fullname: str, path: Sequence[str] | None, target: types.ModuleType | None = None
    ) -> importlib.machinery.ModuleSpec | None:
        owner = _owners.get(fullname.partition(".")[0])
        if owner is None or "." not in fullname:
            return None
        spec = importlib.machinery.PathFinder.find_spec(fullname, path)
        if spec is None or not isinstance(spec.loader, importlib.machinery.SourceFileLoader):
            return spec
        assert spec.origin is not None
        return importlib.util.spec_from_file_location(
            fullname,
            spec.origin,
            loader=_OwnFilesLoader(fullname, spec.origin, owner),
            submodule_search_locations=spec.submodule_search_locations,
        )


_finder = _OwnFilesFinder()


def prepare(package: str, folders: Sequence[str], instance: str = "") -> ModelImports:
    """Register ``package``, whose modules are the files in ``folders``, for one model."""
    owner = ModelImports(package, folders, instance)
    holder = types.ModuleType(package)
    holder.__path__ = list(folders)
    holder.__package__ = package
    holder.__spec__ = importlib.machinery.ModuleSpec(package, None, is_package=True)
    holder.__spec__.submodule_search_locations = list(folders)
    with _lock:
        if _finder not in sys.meta_path:
            sys.meta_path.insert(0, _finder)
        _owners[package] = owner
        sys.modules[package] = holder
        for folder in folders:
            _folders[folder] = _folders.get(folder, 0) + 1
            if folder not in sys.path:
                sys.path.append(folder)
    return owner


def release(package: str) -> None:
    """Forget ``package`` and every module imported into it."""
    with _lock:
        owner = _owners.pop(package, None)
        if owner is None:
            return
        prefix = package + "."
        # A snapshot of the names: other threads import while this one walks them (models
        # load side by side), and a dict that changes size under a walk raises.
        for name in [n for n in list(sys.modules) if n == package or n.startswith(prefix)]:
            sys.modules.pop(name, None)
        for folder in owner.folders:
            left = _folders.get(folder, 0) - 1
            if left > 0:
                _folders[folder] = left
                continue
            _folders.pop(folder, None)
            try:
                sys.path.remove(folder)
            except ValueError:
                pass


def calling_model() -> ModelImports | None:
    """The model whose code (its ``model.py`` or a file beside it) made the current call."""
    frame: types.FrameType | None = sys._getframe(1)
    while frame is not None:
        owner = _owners.get(str(frame.f_globals.get("__name__", "")).partition(".")[0])
        if owner is not None:
            return owner
        frame = frame.f_back
    return None
