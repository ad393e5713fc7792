"""Custom metrics of Python models: ``pb_utils.MetricFamily`` and ``family.Metric(labels)``,
shown on the metrics endpoint next to Triton's families.

Families are process-wide and keyed by name: declaring a family again with the same kind
and description shares it (two instances of a model count together), and a metric with
the same labels shares its series. They outlive the model that declared them, as
tritonserver's do after an unload. Updates come from model threads; a scrape reads under
the same lock.
"""

from __future__ import annotations

import bisect
import enum
import re
import threading
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

from server.backends.python.messages import TritonModelException
from server.metrics import custom
from server.metrics.exposition import Family, format_value

_NAME = re.compile(r"^[a-zA-Z_:][a-zA-Z0-9_:]*$")
_LABEL = re.compile(r"^[a-zA-Z_][a-zA-Z0-9_]*$")


class MetricKind(enum.IntEnum):
    COUNTER = 0
    GAUGE = 1
    HISTOGRAM = 2


_TYPES = {MetricKind.COUNTER: "counter", MetricKind.GAUGE: "gauge", MetricKind.HISTOGRAM: "histogram"}  # fmt: skip
LabelKey = tuple[tuple[str, str], ...]


@dataclass(slots=True)
class _Series:
    labels: LabelKey
    bounds: tuple[float, ...] = ()
    value: float = 0.0
    counts: list[int] = field(default_factory=list)  # per bucket, the last one +Inf
    total: float = 0.0


@dataclass(slots=True)
class _FamilyState:
    name: str
    description: str
    kind: MetricKind
    series: dict[LabelKey, _Series] = field(default_factory=dict)


_lock = threading.Lock()
_families: dict[str, _FamilyState] = {}


class MetricFamily:
    """``MetricFamily(name, description, kind)`` with ``kind`` one of ``MetricFamily.COUNTER``,
    ``GAUGE`` or ``HISTOGRAM``."""

    COUNTER = MetricKind.COUNTER
    GAUGE = MetricKind.GAUGE
    HISTOGRAM = MetricKind.HISTOGRAM

    def __init__(self, name: str, description: str, kind: MetricKind | int) -> None:
        if not isinstance(name, str) or not _NAME.match(name):
            raise TritonModelException(f"invalid metric family name '{name}'")
        try:
            kind = MetricKind(kind)
        except ValueError:
            raise TritonModelException(
                f"invalid metric kind {kind!r} for family '{name}': use MetricFamily.COUNTER, "
                "MetricFamily.GAUGE or MetricFamily.HISTOGRAM"
            ) from None
        description = str(description)
        with _lock:
            state = _families.get(name)
            if state is None:
                state = _families[name] = _FamilyState(name, description, kind)
            elif (state.kind, state.description) != (kind, description):
                raise TritonModelException(
                    f"metric family '{name}' already exists with another kind or description"
                )
        self._state = state
        self.name = name
        self.description = description
        self.kind = kind

    def Metric(  # noqa: N802 - Triton's method name
        self, labels: Mapping[str, str] | None = None, buckets: Sequence[float] | None = None
    ) -> Metric:
        return Metric(self, labels, buckets)


class Metric:
    """One series of a family: ``increment`` (counters and gauges), ``set`` (gauges),
    ``observe`` (histograms) and ``value`` (counters and gauges)."""

    def __init__(
        self,
        family: MetricFamily,
        labels: Mapping[str, str] | None = None,
        buckets: Sequence[float] | None = None,
    ) -> None:
        self.family = family
        self.labels = _labels(labels or {})
        bounds = _bounds(family, buckets)
        key = tuple(sorted(self.labels.items()))
        with _lock:
            series = family._state.series.get(key)
            if series is None:
                series = family._state.series[key] = _Series(
                    key, bounds, counts=[0] * (len(bounds) + 1)
                )
            elif series.bounds != bounds:
                raise TritonModelException(
                    f"a metric of '{family.name}' with these labels has other buckets"
                )
        self._series = series

    def increment(self, value: float) -> None:
        kind = self.family.kind
        if kind == MetricKind.HISTOGRAM:
            raise TritonModelException("a histogram metric cannot be incremented; use observe()")
        if kind == MetricKind.COUNTER and value < 0:
            raise TritonModelException("a counter metric cannot be incremented by a negative value")
        with _lock:
            self._series.value += float(value)

    def set(self, value: float) -> None:
        if self.family.kind != MetricKind.GAUGE:
            raise TritonModelException("only a gauge metric can be set")
        with _lock:
            self._series.value = float(value)

    def observe(self, value: float) -> None:
        if self.family.kind != MetricKind.HISTOGRAM:
            raise TritonModelException("only a histogram metric can observe values")
        series = self._series
        with _lock:
            series.counts[bisect.bisect_left(series.bounds, float(value))] += 1
            series.total += float(value)

    def value(self) -> float:
        if self.family.kind == MetricKind.HISTOGRAM:
            raise TritonModelException("a histogram metric has no single value")
        with _lock:
            return self._series.value


def _labels(labels: Mapping[str, str]) -> dict[str, str]:
    out: dict[str, str] = {}
    for key, value in dict(labels).items():
        if not isinstance(key, str) or not _LABEL.match(key) or key == "le":
            raise TritonModelException(f"invalid metric label name '{key}'")
        if not isinstance(value, str):
            raise TritonModelException(f"the value of metric label '{key}' must be a string")
        out[key] = value
    return out


def _bounds(family: MetricFamily, buckets: Sequence[float] | None) -> tuple[float, ...]:
    if family.kind != MetricKind.HISTOGRAM:
        if buckets:
            raise TritonModelException("only histogram metrics take buckets")
        return ()
    if buckets is None:
        raise TritonModelException("a histogram metric needs buckets")
    bounds = tuple(float(b) for b in buckets)
    if any(later <= earlier for earlier, later in zip(bounds, bounds[1:], strict=False)):
        raise TritonModelException("histogram buckets must be in increasing order")
    return bounds


def families() -> list[Family]:
    """The families for the metrics endpoint, in declaration order. A histogram writes its
    count and sum, then its cumulative buckets, as tritonserver does."""
    out: list[Family] = []
    with _lock:
        for state in _families.values():
            family = Family(state.name, state.description, _TYPES[state.kind])
            for key, series in state.series.items():
                labels = dict(key)
                if state.kind != MetricKind.HISTOGRAM:
                    family.add(labels, series.value)
                    continue
                family.add(labels, sum(series.counts), "_count")
                family.add(labels, series.total, "_sum")
                running = 0
                for bound, count in zip(series.bounds, series.counts, strict=False):
                    running += count
                    family.add({**labels, "le": format_value(bound)}, running, "_bucket")
                family.add({**labels, "le": "+Inf"}, running + series.counts[-1], "_bucket")
            out.append(family)
    return out


custom.register(families)
