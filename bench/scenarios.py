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


def select(
    groups: set[str] | None, protocols: set[str] | None, targets: set[str] | None
) -> list[Scenario]:
    chosen = []
    for scenario in all_scenarios():
        if groups and scenario.group not in groups:
            continue
        if protocols and scenario.protocol not in protocols:
            continue
        kept = tuple(t for t in scenario.targets if not targets or t in targets)
        if kept:
            chosen.append(
                Scenario(
                    scenario.group, scenario.model, scenario.protocol, scenario.concurrency, kept
                )
            )
    return chosen
