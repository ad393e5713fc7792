"""The dynamic batch decision as a pure function of queue state and the current time.

Given the queued requests in service order (priority level, then arrival), it answers
either "run the first N now" or "nothing yet, look again in W ns (or on the next
arrival)". It never touches an event loop, a clock or a future, so every batching rule
can be tested with plain values.

The rules are Triton's dynamic batcher's:

- rows are counted, not requests, and a request is never split;
- a batch never exceeds ``max_batch_size``;
- the largest preferred size reachable from the head of the queue runs at once;
- a request whose batch-checked shapes (or optional-input set) differ from the first
  request's ends the batch there: it is not merged and waits for the next one;
- once the pending rows reach the largest preferred size, or the next request would not
  fit, whatever is pending runs;
- with ``max_delay_ns == 0`` nothing ever waits; otherwise the oldest pending request
  may wait up to ``max_delay_ns`` for a preferred size to fill.
"""

from __future__ import annotations

from collections.abc import Hashable, Iterable
from dataclasses import dataclass
from typing import Protocol


class Candidate(Protocol):
    """What the decision needs to know about one queued request."""

    @property
    def rows(self) -> int: ...

    @property
    def signature(self) -> Hashable: ...

    @property
    def enqueue_ns(self) -> int: ...

    @property
    def deadline_ns(self) -> int: ...


@dataclass(frozen=True, slots=True)
class BatchRules:
    max_batch_size: int
    preferred_sizes: tuple[int, ...]
    max_delay_ns: int = 0
    # False when no input needs equal shapes and no input is optional: signatures are ignored.
    check_signature: bool = False

    def __post_init__(self) -> None:
        if self.max_batch_size < 1:
            raise ValueError("max_batch_size must be >= 1 for dynamic batching")
        sizes = tuple(sorted({s for s in self.preferred_sizes if 0 < s <= self.max_batch_size}))
        object.__setattr__(self, "preferred_sizes", sizes or (self.max_batch_size,))

    @property
    def largest_preferred(self) -> int:
        return self.preferred_sizes[-1]


@dataclass(frozen=True, slots=True)
class Decision:
    """``take`` > 0: run the first ``take`` candidates now. Otherwise wait ``wait_ns``
    (None: until something new arrives) and decide again."""

    take: int
    rows: int = 0
    wait_ns: int | None = None

    @property
    def run_now(self) -> bool:
        return self.take > 0


NOTHING = Decision(0)
# A deadline that already passed is re-examined after this long (Triton waits 1 us too).
EXPIRED_RECHECK_NS = 1_000


def decide(candidates: Iterable[Candidate], rules: BatchRules, now_ns: int) -> Decision:
    """Choose the next batch from ``candidates`` (in service order) at time ``now_ns``."""
    preferred = rules.preferred_sizes
    largest = rules.largest_preferred
    pending_rows = 0
    pending_count = 0
    best_count = 0
    best_rows = 0
    oldest_ns: int | None = None
    nearest_deadline = 0
    signature: Hashable = None
    send_now = False
    for candidate in candidates:
        rows = candidate.rows if candidate.rows > 1 else 1
        if pending_count == 0:
            signature = candidate.signature
        else:
            if pending_rows + rows > largest and best_count == 0:
                # The next request would pass every preferred size: what is pending is
                # the best this queue head can offer.
                best_count, best_rows = pending_count, pending_rows
            if pending_rows + rows > rules.max_batch_size:
                send_now = True
                break
            if rules.check_signature and candidate.signature != signature:
                send_now = True
                break
        pending_rows += rows
        pending_count += 1
        if oldest_ns is None or candidate.enqueue_ns < oldest_ns:
            oldest_ns = candidate.enqueue_ns
        deadline = candidate.deadline_ns
        if deadline and (nearest_deadline == 0 or deadline < nearest_deadline):
            nearest_deadline = deadline
        if pending_rows in preferred:
            best_count, best_rows = pending_count, pending_rows

    if pending_count == 0:
        return NOTHING
    assert oldest_ns is not None
    waited = now_ns - oldest_ns
    delay = rules.max_delay_ns
    exceeded = delay > 0 and waited >= delay
    if best_count and not exceeded:
        return Decision(best_count, best_rows)
    if send_now or pending_rows >= largest or delay == 0 or exceeded:
        return Decision(pending_count, pending_rows)
    wait = delay - waited
    if nearest_deadline:
        wait = (
            min(wait, nearest_deadline - now_ns)
            if now_ns <= nearest_deadline
            else EXPIRED_RECHECK_NS
        )
    return Decision(0, 0, max(wait, 0))
