"""Scheduler selection: dynamic batching when the config asks for it, else the default."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from server.backends.base import ModelInstance
from server.repository.view import ModelView
from server.scheduler.base import Scheduler
from server.stats import ModelStats


def create_scheduler(
    config: Any, view: ModelView, instances: Sequence[ModelInstance], stats: ModelStats
) -> Scheduler:
    if config.HasField("dynamic_batching") and view.max_batch_size > 0:
        try:
            from server.scheduler.dynamic import DynamicBatcher
        except ImportError:
            pass
        else:
            return DynamicBatcher(view, instances, stats, config=config)
    from server.scheduler.direct import DirectScheduler

    return DirectScheduler(view, instances, stats)
