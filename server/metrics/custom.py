"""Metric families kept outside the server's statistics, such as the ones a Python model
declares with ``pb_utils.MetricFamily``: providers register here and the metrics endpoint
renders their families after Triton's own, at every scrape.

This module imports nothing of the backends, so a backend can register a provider without
the metrics listener being loaded (or enabled) at all.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable, Iterable

from server.metrics.exposition import Family

log = logging.getLogger(__name__)

Provider = Callable[[], Iterable[Family]]

_lock = threading.Lock()
_providers: list[Provider] = []


def register(provider: Provider) -> None:
    with _lock:
        if provider not in _providers:
            _providers.append(provider)


def unregister(provider: Provider) -> None:
    with _lock:
        if provider in _providers:
            _providers.remove(provider)


def families(taken: Iterable[str] = ()) -> list[Family]:
    """Every provider's families, leaving out names in ``taken`` (the server's own) and
    repeats, so the scrape never declares a family twice. A failing provider is logged
    and skipped: the server's families must reach the scraper regardless."""
    with _lock:
        providers = list(_providers)
    seen = set(taken)
    out: list[Family] = []
    for provider in providers:
        try:
            provided = list(provider())
        except Exception:
            log.exception("a custom metrics provider failed")
            continue
        for family in provided:
            if family.name in seen:
                log.warning(
                    "custom metric family '%s' repeats a family name; left out", family.name
                )
                continue
            seen.add(family.name)
            out.append(family)
    return out
