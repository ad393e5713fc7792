"""``--metrics-config KEY=VALUE`` options, with Triton's keys and defaults."""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass

log = logging.getLogger(__name__)

# quantile -> allowed error, as Triton's default ``summary_quantiles``.
DEFAULT_QUANTILES: tuple[tuple[float, float], ...] = (
    (0.5, 0.05),
    (0.9, 0.01),
    (0.95, 0.001),
    (0.99, 0.001),
    (0.999, 0.001),
)


@dataclass(frozen=True, slots=True)
class MetricsOptions:
    counter_latencies: bool = True
    summary_latencies: bool = False
    histogram_latencies: bool = False
    summary_quantiles: tuple[tuple[float, float], ...] = DEFAULT_QUANTILES
    # How long an observation counts towards the summary quantiles.
    summary_max_age_s: float = 60.0


def parse_metrics_config(entries: Sequence[str]) -> MetricsOptions:
    """Raise ValueError on a malformed entry; warn about keys this server does not use."""
    values: dict[str, object] = {}
    for entry in entries:
        key, sep, raw = entry.partition("=")
        key, raw = key.strip(), raw.strip()
        if not sep or not key:
            raise ValueError(f"--metrics-config expects KEY=VALUE, got '{entry}'")
        if key in ("counter_latencies", "summary_latencies", "histogram_latencies"):
            values[key] = _bool(key, raw)
        elif key == "summary_quantiles":
            values[key] = _quantiles(raw)
        else:
            log.warning("--metrics-config key '%s' is not used by this server", key)
    return MetricsOptions(**values)  # type: ignore[arg-type]


def _bool(key: str, raw: str) -> bool:
    lowered = raw.lower()
    if lowered in ("true", "1", "yes", "on"):
        return True
    if lowered in ("false", "0", "no", "off"):
        return False
    raise ValueError(f"--metrics-config {key} expects true or false, got '{raw}'")


def _quantiles(raw: str) -> tuple[tuple[float, float], ...]:
    pairs = []
    for item in raw.split(","):
        quantile, sep, error = item.partition(":")
        try:
            pair = (float(quantile), float(error) if sep else 0.0)
        except ValueError:
            raise ValueError(f"--metrics-config summary_quantiles: bad entry '{item}'") from None
        if not 0.0 <= pair[0] <= 1.0 or not 0.0 <= pair[1] <= 1.0:
            raise ValueError(f"--metrics-config summary_quantiles: '{item}' is out of [0, 1]")
        pairs.append(pair)
    if not pairs:
        raise ValueError("--metrics-config summary_quantiles is empty")
    return tuple(pairs)
