"""A small writer for the Prometheus text format (version 0.0.4), used for Triton's families.

prometheus-client renames every counter family to ``*_total`` and adds ``_created`` series,
which breaks rules and dashboards written for Triton; this writer emits exactly the family
names it is given, with ``# TYPE name counter`` lines and unsuffixed samples, as Triton does.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field

CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"
TYPES = frozenset({"counter", "gauge", "summary", "histogram", "untyped"})


@dataclass(slots=True)
class Sample:
    labels: Mapping[str, str]
    value: float
    suffix: str = ""  # "_sum", "_count" or "_bucket" for summaries and histograms


@dataclass(slots=True)
class Family:
    name: str
    help: str
    type: str
    samples: list[Sample] = field(default_factory=list)

    def __post_init__(self) -> None:
        if self.type not in TYPES:
            raise ValueError(f"unknown metric type '{self.type}'")

    def add(self, labels: Mapping[str, str], value: float, suffix: str = "") -> None:
        self.samples.append(Sample(labels, value, suffix))


def render(families: Iterable[Family], *, skip_empty: bool = True) -> str:
    """Families in the order given. A family without samples is left out unless
    ``skip_empty`` is false (Triton writes families of loaded models only)."""
    lines: list[str] = []
    for family in families:
        if skip_empty and not family.samples:
            continue
        lines.append(f"# HELP {family.name} {_escape_help(family.help)}")
        lines.append(f"# TYPE {family.name} {family.type}")
        for sample in family.samples:
            lines.append(
                f"{family.name}{sample.suffix}{_labels(sample.labels)} {format_value(sample.value)}"
            )
    return "\n".join(lines) + "\n" if lines else ""


def format_value(value: float) -> str:
    if isinstance(value, bool):
        return "1" if value else "0"
    if isinstance(value, int):
        return str(value)
    if math.isnan(value):
        return "NaN"
    if math.isinf(value):
        return "+Inf" if value > 0 else "-Inf"
    if value.is_integer() and abs(value) < 2**53:
        return str(int(value))
    return repr(value)


def _labels(labels: Mapping[str, str]) -> str:
    if not labels:
        return ""
    body = ",".join(f'{key}="{_escape_label(str(value))}"' for key, value in labels.items())
    return "{" + body + "}"


def _escape_label(value: str) -> str:
    return value.replace("\\", "\\\\").replace("\n", "\\n").replace('"', '\\"')


def _escape_help(text: str) -> str:
    return text.replace("\\", "\\\\").replace("\n", "\\n")
