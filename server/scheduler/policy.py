"""Priority levels and their queue policies: where a request waits, for how long, and in
which order the batcher sees it.

Service order is level 1 first (1 is the highest priority), and within a level the live
requests in arrival order, then the requests whose queue timeout expired under the DELAY
action. Everything here takes the time as an argument, so it is tested without a clock.
"""

from __future__ import annotations

import heapq
from collections import deque
from collections.abc import Hashable, Iterator
from dataclasses import dataclass, field
from typing import Any

from server.errors import ServerError, unavailable
from server.types import InferRequest

REJECT = "REJECT"
DELAY = "DELAY"

QUEUE_FULL = "Exceeds maximum queue size"
TIMEOUT_EXPIRED = "Request timeout expired"


@dataclass(frozen=True, slots=True)
class QueuePolicy:
    timeout_action: str = REJECT
    default_timeout_us: int = 0
    allow_timeout_override: bool = False
    max_queue_size: int = 0

    def deadline_ns(self, enqueue_ns: int, request_timeout_us: int) -> int:
        """The queue deadline fixed at enqueue; 0 means none. A request's own timeout can
        only shorten the default, and only when the policy allows it."""
        timeout_us = self.default_timeout_us
        if self.allow_timeout_override and 0 < request_timeout_us < timeout_us:
            timeout_us = request_timeout_us
        return enqueue_ns + timeout_us * 1000 if timeout_us else 0

    @classmethod
    def from_config(cls, message: Any) -> QueuePolicy:
        # timeout_action is an enum: REJECT = 0, DELAY = 1.
        return cls(
            timeout_action=DELAY if int(message.timeout_action) == 1 else REJECT,
            default_timeout_us=int(message.default_timeout_microseconds),
            allow_timeout_override=bool(message.allow_timeout_override),
            max_queue_size=int(message.max_queue_size),
        )


@dataclass(slots=True, eq=False)
class Entry:
    """One queued request, with what the batch decision reads precomputed."""

    request: InferRequest
    rows: int
    signature: Hashable
    enqueue_ns: int
    deadline_ns: int
    level: int
    seq: int = 0
    delayed: bool = False
    queued: bool = True


@dataclass(slots=True)
class _Level:
    policy: QueuePolicy
    live: deque[Entry] = field(default_factory=deque)
    delayed: deque[Entry] = field(default_factory=deque)

    def __len__(self) -> int:
        return len(self.live) + len(self.delayed)


class PriorityQueues:
    """One queue per priority level, each with its policy."""

    def __init__(
        self,
        levels: int = 0,
        default_level: int = 0,
        default_policy: QueuePolicy | None = None,
        level_policies: dict[int, QueuePolicy] | None = None,
    ) -> None:
        # priority_levels 0 means a single queue; it is kept as level 1 internally.
        self.levels = max(int(levels), 1)
        self.default_level = default_level if 1 <= default_level <= self.levels else 1
        base = default_policy or QueuePolicy()
        overrides = level_policies or {}
        self._levels = {n: _Level(overrides.get(n, base)) for n in range(1, self.levels + 1)}
        self._order = [self._levels[n] for n in range(1, self.levels + 1)]
        self._deadlines: list[tuple[int, int, Entry]] = []
        self._pushed = 0  # breaks deadline ties in the heap without comparing entries
        self._size = 0

    def level_of(self, priority: int) -> int:
        """A request's level: its priority, or the default level for 0 or out of range."""
        return priority if 1 <= priority <= self.levels else self.default_level

    def policy(self, level: int) -> QueuePolicy:
        return self._levels[level].policy

    def __len__(self) -> int:
        return self._size

    def depths(self) -> dict[int, int]:
        """Queued requests per priority level (1 is the highest)."""
        return {n: len(level) for n, level in self._levels.items()}

    def push(self, entry: Entry) -> None:
        """Queue ``entry`` at its level, or raise UNAVAILABLE when that level is full."""
        level = self._levels[entry.level]
        limit = level.policy.max_queue_size
        if limit and len(level) >= limit:
            raise unavailable(QUEUE_FULL)
        level.live.append(entry)
        entry.queued = True
        self._size += 1
        self._pushed += 1
        if entry.deadline_ns:
            heapq.heappush(self._deadlines, (entry.deadline_ns, self._pushed, entry))

    def __iter__(self) -> Iterator[Entry]:
        """Every queued entry in service order."""
        for level in self._order:
            yield from level.live
            yield from level.delayed

    def pop(self, count: int) -> list[Entry]:
        """Remove and return the first ``count`` entries in service order."""
        taken: list[Entry] = []
        for level in self._order:
            for queue in (level.live, level.delayed):
                while queue and len(taken) < count:
                    entry = queue.popleft()
                    entry.queued = False
                    taken.append(entry)
            if len(taken) >= count:
                break
        self._size -= len(taken)
        return taken

    def remove(self, entry: Entry) -> bool:
        """Take ``entry`` out wherever it waits; False when it is no longer queued."""
        if not entry.queued:
            return False
        level = self._levels[entry.level]
        (level.delayed if entry.delayed else level.live).remove(entry)
        entry.queued = False
        self._size -= 1
        return True

    def drain(self) -> list[Entry]:
        return self.pop(self._size)

    def nearest_deadline(self) -> int:
        """The earliest queue deadline still pending, or 0."""
        heap = self._deadlines
        while heap and not _watching(heap[0][2]):
            heapq.heappop(heap)
        return heap[0][0] if heap else 0

    def expire(self, now_ns: int) -> list[tuple[Entry, ServerError]]:
        """Apply each level's timeout action to the entries whose deadline has passed:
        REJECT removes them (returned with their error), DELAY moves them behind the
        live requests of their level."""
        rejected: list[tuple[Entry, ServerError]] = []
        heap = self._deadlines
        while heap and heap[0][0] <= now_ns:
            entry = heapq.heappop(heap)[2]
            if not _watching(entry):
                continue
            level = self._levels[entry.level]
            level.live.remove(entry)
            if level.policy.timeout_action == DELAY:
                entry.delayed = True
                level.delayed.append(entry)
            else:
                entry.queued = False
                self._size -= 1
                rejected.append((entry, unavailable(TIMEOUT_EXPIRED)))
        return rejected


def _watching(entry: Entry) -> bool:
    return entry.queued and not entry.delayed


def queues_from_config(batching: Any) -> PriorityQueues:
    """Build the queues of a ``ModelDynamicBatching`` message."""
    default = QueuePolicy.from_config(batching.default_queue_policy)
    per_level = {
        int(level): QueuePolicy.from_config(policy)
        for level, policy in batching.priority_queue_policy.items()
    }
    return PriorityQueues(
        int(batching.priority_levels), int(batching.default_priority_level), default, per_level
    )
