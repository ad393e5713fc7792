"""Poll mode (``--model-control-mode=poll``): bring the loaded models in line with the files.

Each poll loads models that appeared, reloads models whose directory changed (a new or
removed version, an edited config.pbtxt or model file), and unloads models whose directory
went away. A model that failed to load is retried only after its files change.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path

from server import collector
from server.errors import ServerError
from server.repository.manager import ModelManager

log = logging.getLogger(__name__)


def tree_mtime(path: Path) -> float:
    """The latest modification time of ``path`` and everything below it (0 if it is gone)."""
    try:
        latest = path.stat().st_mtime
    except OSError:
        return 0.0
    for root, dirs, files in os.walk(path):
        for name in (*dirs, *files):
            try:
                latest = max(latest, os.stat(os.path.join(root, name)).st_mtime)
            except OSError:
                continue
    return latest


async def poll_once(manager: ModelManager) -> None:
    if await _apply_changes(manager):
        collector.settle()


async def _apply_changes(manager: ModelManager) -> bool:
    """Load what is new or changed and unload what is gone; whether anything was."""
    changed = False
    found = manager.scan()
    for name in sorted(manager.models):
        entry = manager.models[name]
        if entry.path is None:
            continue  # loaded from an API override, not from the repository
        if name not in found:
            log.info("model '%s' was removed from the repository; unloading it", name)
            changed = True
            await manager.unload(name)
            manager.models.pop(name, None)
            continue
        stamp = tree_mtime(entry.path)
        never_tried = not entry.versions and not entry.state
        if not never_tried and stamp <= entry.mtime:
            continue
        log.info("model '%s' %s; loading it", name, "is new" if never_tried else "changed")
        changed = True
        try:
            await manager.load(name)
        except ServerError as exc:
            log.error("%s", exc.message)
        # Remember what was tried, so a broken model is retried only once its files change.
        entry = manager.models.get(name, entry)
        entry.mtime = max(entry.mtime, stamp)
    return changed
