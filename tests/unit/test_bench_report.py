"""The benchmark's order of runs and its targets as paired ratios: pure logic, no servers."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from bench import report, run, scenarios


class _Target:
    def __init__(self, name: str) -> None:
        self.name = name


def _row(target: str, scenario: scenarios.Scenario, repeat: int, rps: float) -> dict[str, Any]:
    return {
        "run": "r1",
        "repeat": repeat,
        "target": target,
        "scenario": scenario.key,
        "group": scenario.group,
        "model": scenario.model,
        "served_model": scenario.model,
        "protocol": scenario.protocol,
        "concurrency": scenario.concurrency,
        "rps": rps,
        "p50_us": 1000.0,
        "p90_us": 1000.0,
        "p99_us": 1000.0,
        "errors": 0,
        "server_cpu_us_per_req": 1e6 / rps,
        "client_cpu_us_per_req": 10.0,
        "server_rss_mb": 100.0,
        "load1": 0.5,
    }


def test_each_group_runs_its_servers_back_to_back_in_a_rotating_order() -> None:
    chosen = scenarios.all_scenarios()
    ours, mlserver, triton = _Target("ours"), _Target("mlserver"), _Target("triton")
    targets: list[Any] = [ours, mlserver, triton]

    def order(repeat: int) -> list[tuple[str, str]]:
        steps = run.plan(chosen, targets, repeat)
        for _, group in steps:
            assert len({s.group for s in group}) == 1
        return [(group[0].group, target.name) for target, group in steps]

    assert order(0) == [
        ("identity", "ours"),
        ("identity", "mlserver"),
        ("identity_py", "ours"),
        ("identity_py", "triton"),
        ("mlp", "ours"),
        ("mlp", "mlserver"),
        ("heavy", "ours"),
        ("heavy", "mlserver"),
    ]
    assert order(1) == [
        ("identity", "mlserver"),
        ("identity", "ours"),
        ("identity_py", "triton"),
        ("identity_py", "ours"),
        ("mlp", "mlserver"),
        ("mlp", "ours"),
        ("heavy", "mlserver"),
        ("heavy", "ours"),
    ]
    # Every scenario is run by each of its servers once per repeat.
    steps = run.plan(chosen, targets, 0)
    for scenario in chosen:
        for name in scenario.targets:
            assert sum(t.name == name and scenario in group for t, group in steps) == 1


def test_a_server_without_scenarios_in_a_group_is_left_out() -> None:
    chosen = scenarios.select({"identity_py"}, set(), set(), None)
    steps = run.plan(chosen, [_Target("ours"), _Target("mlserver"), _Target("triton")], 0)
    assert [t.name for t, _ in steps] == ["ours", "triton"]


def test_ratios_pair_the_repeats_and_take_their_median() -> None:
    scenario = scenarios.Scenario("identity_py", "identity_py", "grpc", 32, ("ours", "triton"))
    # The machine halves its speed in the second repeat: both sides see it.
    rows = [
        _row("ours", scenario, 0, 1000),
        _row("triton", scenario, 0, 900),
        _row("ours", scenario, 1, 500),
        _row("triton", scenario, 1, 480),
        _row("ours", scenario, 2, 990),
        _row("triton", scenario, 2, 1000),
    ]
    summary = report.summarize(rows, [], {})
    check = next(
        c for c in summary["targets"] if c["target"] == "python identity c=32 grpc: req/s vs Triton"
    )
    assert check["repeats"] == pytest.approx([1000 / 900, 500 / 480, 990 / 1000])
    assert check["value"] == pytest.approx(500 / 480)
    assert check["met"] is True
    # The ratio of the medians (990 / 900) would have said 1.10.
    cpu = next(
        c
        for c in summary["targets"]
        if c["target"] == "python identity c=32 grpc: CPU-us/req vs Triton"
    )
    assert cpu["value"] == pytest.approx(480 / 500)


def test_the_heavy_model_is_paired_with_the_limit_of_its_repeat() -> None:
    scenario = scenarios.Scenario("heavy", "heavy", "grpc", 64, ("ours", "mlserver"))
    rows = [_row("ours", scenario, 0, 800), _row("ours", scenario, 1, 1200)]
    limits = [
        {"run": "r1", "repeat": r, "ort_limit": {"heavy": {"items_per_s": {"64": v}, "best": v}}}
        for r, v in ((0, 1000), (1, 2000))
    ]
    summary = report.summarize(rows, limits, {})
    check = next(
        c for c in summary["targets"] if c["target"] == "heavy c=64 grpc: vs in-process ORT best"
    )
    assert check["repeats"] == pytest.approx([0.8, 0.6])
    assert check["value"] == pytest.approx(0.7)
    assert summary["ort_limit"]["heavy"]["best"] == pytest.approx(1500)


def test_sides_from_separate_runs_fall_back_to_the_ratio_of_medians() -> None:
    scenario = scenarios.Scenario("mlp", "mlp", "grpc", 64, ("ours", "mlserver"))
    off = scenarios.Scenario("mlp", "mlp_nobatch", "grpc", 64, ("ours", "mlserver"))
    rows = [_row("ours", scenario, r, v) for r, v in ((0, 5000), (1, 6000), (2, 7000))]
    rows += [{**_row("ours", off, r, 2000), "run": "r0"} for r in range(3)]
    check = next(
        c
        for c in report.summarize(rows, [], {})["targets"]
        if c["target"] == "mlp c=64 grpc: batching on vs off"
    )
    assert check["repeats"] == []
    assert check["value"] == pytest.approx(3.0)


def test_reports_from_raw_files_keep_each_files_repeats_apart(tmp_path: Path) -> None:
    scenario = scenarios.Scenario("identity_py", "identity_py", "grpc", 32, ("ours", "triton"))
    old, new = tmp_path / "20260101-000000.jsonl", tmp_path / "20260102-000000.jsonl"

    def write(path: Path, rows: list[dict[str, Any]]) -> None:
        # As runs wrote them before rows carried their run.
        path.write_text(
            "".join(json.dumps({k: v for k, v in r.items() if k != "run"}) + "\n" for r in rows)
        )

    write(old, [_row("ours", scenario, 0, 1000), _row("triton", scenario, 0, 1000)])
    write(new, [_row("ours", scenario, 0, 2000)])
    out = tmp_path / "out"
    assert run.from_raw([old, new], out, 5.0, 2.0) == 0
    summary = json.loads((out / "latest.json").read_text())
    check = next(
        c for c in summary["targets"] if c["target"] == "python identity c=32 grpc: req/s vs Triton"
    )
    # ours from the second file, tritonserver from the first: not a pair.
    assert check["repeats"] == []
    assert check["value"] == pytest.approx(2.0)
