"""Priority levels and queue policies, with the time passed in."""

from __future__ import annotations

import pytest
from google.protobuf import text_format

from server.errors import Code, ServerError
from server.protocol.generated import model_config_pb2
from server.scheduler.policy import (
    DELAY,
    QUEUE_FULL,
    REJECT,
    TIMEOUT_EXPIRED,
    Entry,
    PriorityQueues,
    QueuePolicy,
    queues_from_config,
)
from server.types import InferRequest

MS = 1_000_000


def entry(level: int, name: str = "", deadline_ns: int = 0) -> Entry:
    return Entry(InferRequest("m", id=name), 1, None, 0, deadline_ns, level)


def ids(queues: PriorityQueues) -> list[str]:
    return [e.request.id for e in queues]


def test_without_levels_there_is_one_queue_and_priority_is_ignored() -> None:
    queues = PriorityQueues()
    assert queues.levels == 1
    assert [queues.level_of(p) for p in (0, 1, 5)] == [1, 1, 1]


@pytest.mark.parametrize(("priority", "level"), [(0, 2), (1, 1), (3, 3), (4, 2), (99, 2)])
def test_priority_zero_or_out_of_range_maps_to_the_default_level(priority: int, level: int) -> None:
    assert PriorityQueues(levels=3, default_level=2).level_of(priority) == level


def test_service_order_is_level_then_arrival() -> None:
    queues = PriorityQueues(levels=3, default_level=2)
    for level, name in [(2, "a"), (3, "b"), (1, "c"), (2, "d"), (1, "e")]:
        queues.push(entry(level, name))
    assert ids(queues) == ["c", "e", "a", "d", "b"]
    assert queues.depths() == {1: 2, 2: 2, 3: 1}
    assert [e.request.id for e in queues.pop(3)] == ["c", "e", "a"]
    assert ids(queues) == ["d", "b"]
    assert len(queues) == 2


def test_max_queue_size_is_per_level_and_rejects_at_enqueue() -> None:
    small = QueuePolicy(max_queue_size=2)
    queues = PriorityQueues(levels=2, default_level=2, level_policies={1: small})
    queues.push(entry(1, "a"))
    queues.push(entry(1, "b"))
    with pytest.raises(ServerError) as caught:
        queues.push(entry(1, "c"))
    assert caught.value.code == Code.UNAVAILABLE
    assert caught.value.message == QUEUE_FULL == "Exceeds maximum queue size"
    for n in range(5):
        queues.push(entry(2, f"low{n}"))  # level 2 has no limit
    queues.pop(1)
    queues.push(entry(1, "c"))  # room again once one left


def test_the_default_policy_applies_to_levels_without_their_own() -> None:
    queues = PriorityQueues(
        levels=2,
        default_level=1,
        default_policy=QueuePolicy(max_queue_size=1),
        level_policies={2: QueuePolicy(max_queue_size=3)},
    )
    assert queues.policy(1).max_queue_size == 1
    assert queues.policy(2).max_queue_size == 3


@pytest.mark.parametrize(
    ("policy", "request_timeout_us", "deadline_us"),
    [
        (QueuePolicy(default_timeout_us=0, allow_timeout_override=True), 500, 0),
        (QueuePolicy(default_timeout_us=1000), 500, 1000),
        (QueuePolicy(default_timeout_us=1000, allow_timeout_override=True), 500, 500),
        (QueuePolicy(default_timeout_us=1000, allow_timeout_override=True), 5000, 1000),
        (QueuePolicy(default_timeout_us=1000, allow_timeout_override=True), 0, 1000),
    ],
)
def test_a_request_timeout_can_only_shorten_the_default(
    policy: QueuePolicy, request_timeout_us: int, deadline_us: int
) -> None:
    start = 7 * MS
    expected = start + deadline_us * 1000 if deadline_us else 0
    assert policy.deadline_ns(start, request_timeout_us) == expected


def test_reject_removes_expired_requests_with_triton_s_message() -> None:
    queues = PriorityQueues(default_policy=QueuePolicy(REJECT, 1000))
    queues.push(entry(1, "late", deadline_ns=1 * MS))
    queues.push(entry(1, "early", deadline_ns=2 * MS))
    queues.push(entry(1, "none"))
    assert queues.nearest_deadline() == 1 * MS
    assert queues.expire(1 * MS - 1) == []
    expired = queues.expire(1 * MS)
    assert [(e.request.id, err.code, err.message) for e, err in expired] == [
        ("late", Code.UNAVAILABLE, TIMEOUT_EXPIRED)
    ]
    assert TIMEOUT_EXPIRED == "Request timeout expired"
    assert ids(queues) == ["early", "none"]
    assert queues.nearest_deadline() == 2 * MS


def test_delay_moves_expired_requests_behind_the_live_ones_of_their_level() -> None:
    queues = PriorityQueues(levels=2, default_level=1, default_policy=QueuePolicy(DELAY, 1000))
    queues.push(entry(1, "a", deadline_ns=1 * MS))
    queues.push(entry(1, "b"))
    queues.push(entry(2, "c"))
    assert queues.expire(5 * MS) == []
    assert ids(queues) == ["b", "a", "c"]
    assert len(queues) == 3
    assert queues.nearest_deadline() == 0  # a delayed request has no deadline left
    queues.push(entry(1, "d"))
    assert ids(queues) == ["b", "d", "a", "c"]


def test_removed_requests_leave_no_trace() -> None:
    queues = PriorityQueues()
    first, second = entry(1, "a", deadline_ns=MS), entry(1, "b")
    queues.push(first)
    queues.push(second)
    assert queues.remove(first)
    assert not queues.remove(first)
    assert queues.nearest_deadline() == 0
    assert queues.expire(10 * MS) == []
    assert ids(queues) == ["b"]
    assert [e.request.id for e in queues.drain()] == ["b"]
    assert len(queues) == 0


def test_queues_are_built_from_the_model_config() -> None:
    batching = text_format.Parse(
        """
        priority_levels: 3
        default_priority_level: 2
        default_queue_policy { max_queue_size: 4 default_timeout_microseconds: 100 }
        priority_queue_policy {
          key: 1
          value { timeout_action: DELAY default_timeout_microseconds: 50
                  allow_timeout_override: true }
        }
        """,
        model_config_pb2.ModelDynamicBatching(),
    )
    queues = queues_from_config(batching)
    assert (queues.levels, queues.default_level) == (3, 2)
    assert queues.policy(1) == QueuePolicy(DELAY, 50, True, 0)
    assert queues.policy(2) == queues.policy(3) == QueuePolicy(REJECT, 100, False, 4)
