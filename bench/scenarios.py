"""What the benchmark measures: a model, a protocol, a concurrency, and the servers that run it."""

from __future__ import annotations

from dataclasses import dataclass

from bench import models


@dataclass(frozen=True)
class Scenario:
    group: str  # identity, identity_py, mlp, heavy
    model: str
    protocol: str
    concurrency: int
    targets: tuple[str, ...]

    @property
    def key(self) -> str:
        return f"{self.model} {self.protocol} c={self.concurrency}"

    @property
    def spec(self) -> models.ModelSpec:
        return models.BY_NAME[self.model]


def all_scenarios() -> list[Scenario]:
    out: list[Scenario] = []
    for concurrency in (1, 32):
        for protocol in ("http-json", "http-binary", "grpc"):
            out.append(
                Scenario("identity", "identity", protocol, concurrency, ("ours", "mlserver"))
            )
            out.append(
                Scenario("identity_py", "identity_py", protocol, concurrency, ("ours", "triton"))
            )
    for model in ("mlp", "mlp_nobatch"):
        for concurrency in (1, 64):
            for protocol in ("http-json", "grpc"):
                out.append(Scenario("mlp", model, protocol, concurrency, ("ours", "mlserver")))
    for protocol in ("http-json", "grpc"):
        out.append(Scenario("heavy", "heavy", protocol, 64, ("ours", "mlserver")))
    return out


def concurrency_range(text: str) -> list[int]:
    """perf_analyzer's ``--concurrency-range start:end:step``: from start to end inclusive in
    strides of step, each defaulting to 1; without an end, start alone."""
    parts = text.split(":")
    if len(parts) > 3 or not all(p.strip().isdigit() for p in parts if p.strip()):
        raise ValueError(f"expected start[:end[:step]] with whole numbers, got {text!r}")
    values = [int(p) if p.strip() else 1 for p in parts]
    start = values[0]
    end = values[1] if len(values) > 1 else start
    step = values[2] if len(values) > 2 else 1
    if start < 1:
        raise ValueError(f"the start of the concurrency range must be at least 1, got {start}")
    if end == 0:
        raise ValueError(
            "an open-ended concurrency range (end 0) needs a latency threshold, which this "
            "benchmark does not search by; give an end"
        )
    if end < start:
        raise ValueError(f"the end of the concurrency range ({end}) is below its start ({start})")
    if step < 1:
        raise ValueError(f"the step of the concurrency range must be at least 1, got {step}")
    return list(range(start, end + 1, step))


def select(
    groups: set[str] | None,
    protocols: set[str] | None,
    targets: set[str] | None,
    concurrencies: list[int] | None = None,
) -> list[Scenario]:
    """The scenarios of the chosen groups, protocols and servers. With ``concurrencies``, each
    chosen model and protocol runs at those levels instead of its usual ones (a sweep)."""
    chosen: list[Scenario] = []
    for scenario in all_scenarios():
        if groups and scenario.group not in groups:
            continue
        if protocols and scenario.protocol not in protocols:
            continue
        kept = tuple(t for t in scenario.targets if not targets or t in targets)
        if not kept:
            continue
        for concurrency in concurrencies or (scenario.concurrency,):
            swept = Scenario(scenario.group, scenario.model, scenario.protocol, concurrency, kept)
            if not any(c.key == swept.key for c in chosen):
                chosen.append(swept)
    return chosen
