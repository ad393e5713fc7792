"""The batch decision, rule by rule, with plain values for the queue and the clock."""

from __future__ import annotations

from collections.abc import Hashable, Sequence
from dataclasses import dataclass

import pytest

from server.scheduler.decision import EXPIRED_RECHECK_NS, BatchRules, Decision, decide

US = 1_000
MS = 1_000_000


@dataclass
class Queued:
    rows: int
    signature: Hashable = None
    enqueue_ns: int = 0
    deadline_ns: int = 0


def queue(*rows: int, at: int = 0) -> list[Queued]:
    return [Queued(r, enqueue_ns=at) for r in rows]


def rules(
    max_batch: int = 8,
    preferred: Sequence[int] = (),
    delay_ns: int = 0,
    check: bool = False,
) -> BatchRules:
    return BatchRules(max_batch, tuple(preferred), delay_ns, check)


def test_an_empty_queue_waits_for_an_arrival() -> None:
    decision = decide([], rules(delay_ns=MS), 0)
    assert not decision.run_now
    assert decision.wait_ns is None


def test_preferred_sizes_default_to_max_batch_size_and_drop_impossible_ones() -> None:
    assert rules(8).preferred_sizes == (8,)
    assert rules(8, (6, 2, 2, 0)).preferred_sizes == (2, 6)
    with pytest.raises(ValueError):
        BatchRules(0, ())


def test_rows_are_counted_not_requests() -> None:
    decision = decide(queue(2, 2, 2), rules(8, [4], delay_ns=MS), 0)
    assert (decision.take, decision.rows) == (2, 4)


def test_a_request_of_zero_rows_counts_as_one() -> None:
    decision = decide(queue(0, 0), rules(8, [2], delay_ns=MS), 0)
    assert (decision.take, decision.rows) == (2, 2)


def test_a_request_is_never_split_to_fill_a_batch() -> None:
    # 5 + 4 would pass max_batch_size 8: the 5-row request goes alone, whole.
    decision = decide(queue(5, 4), rules(8, delay_ns=MS), 0)
    assert (decision.take, decision.rows) == (1, 5)


@pytest.mark.parametrize("count", [8, 9, 20])
def test_a_batch_never_exceeds_max_batch_size(count: int) -> None:
    decision = decide(queue(*[1] * count), rules(8, delay_ns=0), 0)
    assert (decision.take, decision.rows) == (8, 8)


@pytest.mark.parametrize(
    ("queued", "expected_rows"),
    [(3, 2), (4, 4), (5, 4), (6, 6), (7, 6), (8, 6)],
)
def test_the_largest_reachable_preferred_size_runs_at_once(queued: int, expected_rows: int) -> None:
    decision = decide(queue(*[1] * queued), rules(8, [2, 4, 6], delay_ns=10 * MS), 0)
    assert decision.run_now
    assert decision.rows == expected_rows


def test_below_every_preferred_size_the_oldest_request_waits_out_the_delay() -> None:
    policy = rules(8, [4], delay_ns=100 * US)
    waiting = decide(queue(1, at=0), policy, 30 * US)
    assert waiting == Decision(0, 0, 70 * US)
    assert decide(queue(1, at=0), policy, 99 * US).wait_ns == 1 * US
    due = decide(queue(1, at=0), policy, 100 * US)
    assert (due.take, due.rows) == (1, 1)


def test_the_delay_is_measured_from_the_oldest_pending_request() -> None:
    # A higher-priority request queued later comes first in service order; the clock still
    # runs from the older one behind it.
    items = [Queued(1, enqueue_ns=80 * US), Queued(1, enqueue_ns=10 * US)]
    policy = rules(8, [4], delay_ns=100 * US)
    assert decide(items, policy, 90 * US).wait_ns == 20 * US
    assert decide(items, policy, 110 * US).take == 2


def test_a_zero_delay_never_waits() -> None:
    decision = decide(queue(1, 1, 1), rules(8, [4], delay_ns=0), 0)
    assert (decision.take, decision.rows) == (3, 3)


def test_with_a_zero_delay_a_reachable_preferred_size_still_wins() -> None:
    decision = decide(queue(*[1] * 6), rules(8, [4], delay_ns=0), 0)
    assert (decision.take, decision.rows) == (4, 4)


def test_once_the_delay_is_exceeded_everything_pending_runs() -> None:
    # 6 rows reach preferred 4 but not 8; after the delay all 6 go, not just the 4.
    policy = rules(8, [4, 8], delay_ns=100 * US)
    assert decide(queue(*[1] * 6), policy, 50 * US).rows == 4
    assert decide(queue(*[1] * 6), policy, 100 * US).rows == 6


def test_reaching_the_largest_preferred_size_runs_at_once() -> None:
    decision = decide(queue(3, 5), rules(16, [8], delay_ns=10 * MS), 0)
    assert (decision.take, decision.rows) == (2, 8)


def test_a_single_request_at_or_past_the_largest_preferred_size_runs_at_once() -> None:
    decision = decide(queue(6), rules(8, [4], delay_ns=10 * MS), 0)
    assert (decision.take, decision.rows) == (1, 6)


def test_a_request_that_would_pass_every_preferred_size_is_left_for_the_next_batch() -> None:
    # 3 rows pending, the next 3 would make 6 > largest preferred 4 (but fit in 8): the
    # pending 3 run now instead of overshooting the preferred size.
    decision = decide(queue(3, 3), rules(8, [4], delay_ns=10 * MS), 0)
    assert (decision.take, decision.rows) == (1, 3)


def test_an_earlier_preferred_size_is_kept_when_a_later_request_overshoots() -> None:
    decision = decide(queue(2, 2, 3), rules(16, [4, 8], delay_ns=10 * MS), 0)
    assert (decision.take, decision.rows) == (2, 4)


def test_different_shapes_end_the_batch_instead_of_merging() -> None:
    items = [Queued(1, "a"), Queued(1, "a"), Queued(1, "b"), Queued(1, "a")]
    decision = decide(items, rules(8, [8], delay_ns=10 * MS, check=True), 0)
    assert (decision.take, decision.rows) == (2, 2)
    # The next decision starts from the odd one out, which fixes the new signature.
    rest = decide(items[2:], rules(8, [8], delay_ns=0, check=True), 0)
    assert (rest.take, rest.rows) == (1, 1)


def test_shapes_are_ignored_when_nothing_needs_checking() -> None:
    items = [Queued(1, "a"), Queued(1, "b"), Queued(1, "c")]
    decision = decide(items, rules(8, delay_ns=0), 0)
    assert decision.take == 3


def test_the_wait_stops_at_the_nearest_queue_deadline() -> None:
    items = [Queued(1, enqueue_ns=0, deadline_ns=300 * US), Queued(1, enqueue_ns=0)]
    policy = rules(8, [4], delay_ns=MS)
    assert decide(items, policy, 100 * US).wait_ns == 200 * US
    assert decide(items, policy, 301 * US).wait_ns == EXPIRED_RECHECK_NS


def test_only_the_first_requests_are_read() -> None:
    def endless() -> object:
        while True:
            yield Queued(1)

    decision = decide(endless(), rules(8, delay_ns=MS), 0)  # type: ignore[arg-type]
    assert decision.rows == 8
