"""The benchmark's concurrency sweep: perf_analyzer's range syntax and the scenarios it makes."""

from __future__ import annotations

import pytest

from bench import scenarios


@pytest.mark.parametrize(
    ("text", "levels"),
    [
        ("8:64:8", [8, 16, 24, 32, 40, 48, 56, 64]),
        ("4", [4]),
        ("1:3", [1, 2, 3]),
        (":4", [1, 2, 3, 4]),
        ("1:10:4", [1, 5, 9]),
        ("::", [1]),
    ],
)
def test_range_as_perf_analyzer_reads_it(text: str, levels: list[int]) -> None:
    assert scenarios.concurrency_range(text) == levels


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("0:4", "start of the concurrency range must be at least 1"),
        ("4:2", "end of the concurrency range (2) is below its start (4)"),
        ("1:0", "open-ended concurrency range (end 0)"),
        ("1:4:0", "step of the concurrency range must be at least 1"),
        ("a", "expected start[:end[:step]]"),
        ("1:2:3:4", "expected start[:end[:step]]"),
        ("-1:4", "expected start[:end[:step]]"),
    ],
)
def test_bad_ranges_say_why(text: str, message: str) -> None:
    with pytest.raises(ValueError) as caught:
        scenarios.concurrency_range(text)
    assert message in str(caught.value)


def test_sweep_runs_each_model_and_protocol_at_every_level() -> None:
    chosen = scenarios.select({"mlp"}, {"grpc"}, {"ours"}, [2, 16])
    assert [s.key for s in chosen] == [
        "mlp grpc c=2",
        "mlp grpc c=16",
        "mlp_nobatch grpc c=2",
        "mlp_nobatch grpc c=16",
    ]
    assert all(s.targets == ("ours",) for s in chosen)


def test_sweep_does_not_repeat_a_scenario_listed_at_two_usual_levels() -> None:
    # identity runs at concurrency 1 and 32 by default; a sweep gives each level once.
    chosen = scenarios.select({"identity"}, {"http-json"}, None, [4])
    assert [s.key for s in chosen] == ["identity http-json c=4"]
    assert chosen[0].targets == ("ours", "mlserver")


def test_without_a_sweep_the_usual_levels_stay() -> None:
    levels = {s.concurrency for s in scenarios.select({"mlp"}, None, None)}
    assert levels == {1, 64}
