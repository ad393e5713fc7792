"""The dynamic batcher on an event loop with fake model instances: what each rule does to
real futures, statistics and executions."""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Sequence

import numpy as np
import pytest
from google.protobuf import text_format

from server.backends.base import ModelInstance, RequestOutputs, Timing
from server.errors import Code, ServerError, internal
from server.protocol.generated import model_config_pb2
from server.repository.view import ModelView, TensorSpec
from server.scheduler.adaptive import LatencyTargetedDelay
from server.scheduler.dynamic import DELAY_SCHEDULER_ENV, ERROR_ISOLATION_KEY, DynamicBatcher
from server.stats import ModelStats
from server.types import InferInput, InferRequest


class FakeInstance(ModelInstance):
    """Echoes INPUT0; fails a whole batch that holds a request with id 'bad'."""

    def __init__(self, gate: threading.Event | None = None) -> None:
        self.batches: list[list[str]] = []
        self.gate = gate
        self.running = threading.Event()

    def execute(self, requests: Sequence[InferRequest], timing: Timing) -> list[RequestOutputs]:
        self.batches.append([r.id for r in requests])
        self.running.set()
        if self.gate is not None:
            self.gate.wait(5)
        if any(r.id == "bad" for r in requests):
            raise internal("poisoned batch")
        timing.input_end_ns = timing.infer_end_ns = timing.compute_start_ns + 1
        return [{"OUTPUT0": r.inputs[0].data} for r in requests]


def make_view(dims: tuple[int, ...] = (4,), optional: bool = False, **params: str) -> ModelView:
    inputs = {"INPUT0": TensorSpec("INPUT0", "FP32", dims)}
    if optional:
        inputs["EXTRA"] = TensorSpec("EXTRA", "FP32", (1,), optional=True)
    checked = ("INPUT0",) if any(d < 0 for d in dims) else ()
    return ModelView(
        name="m",
        version="1",
        platform="onnxruntime_onnx",
        backend="onnxruntime",
        max_batch_size=8,
        inputs=inputs,
        outputs={"OUTPUT0": TensorSpec("OUTPUT0", "FP32", dims)},
        parameters=dict(params),
        shape_checked_inputs=checked,
    )


def make_batcher(
    batching: str,
    instances: Sequence[ModelInstance],
    view: ModelView | None = None,
) -> DynamicBatcher:
    config = text_format.Parse(
        f"max_batch_size: 8 dynamic_batching {{ {batching} }}", model_config_pb2.ModelConfig()
    )
    view = view or make_view()
    return DynamicBatcher(view, instances, ModelStats("m", "1"), config=config)


def request(
    name: str, rows: int = 1, width: int = 4, priority: int = 0, timeout_us: int = 0
) -> InferRequest:
    data = np.zeros((rows, width), np.float32)
    return InferRequest(
        "m",
        id=name,
        inputs=[InferInput("INPUT0", "FP32", data.shape, data)],
        batch_size=rows,
        priority=priority,
        timeout_us=timeout_us,
    )


async def wait_for(condition: object, timeout: float = 5.0) -> None:
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while not condition():  # type: ignore[operator]
        assert loop.time() < deadline, "condition never became true"
        await asyncio.sleep(0.001)


def batch_sizes(stats: ModelStats) -> dict[int, int]:
    return {size: s.compute_infer.count for size, s in stats.batch_stats.items()}


async def test_held_requests_form_preferred_batches(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(DELAY_SCHEDULER_ENV, "16")
    instance = FakeInstance()
    batcher = make_batcher("preferred_batch_size: [4]", [instance])
    results = await asyncio.gather(*(batcher.submit(request(f"r{n}")) for n in range(16)))
    assert len(results) == 16
    assert [len(b) for b in instance.batches] == [4, 4, 4, 4]
    assert [r for b in instance.batches for r in b] == [f"r{n}" for n in range(16)]
    stats = batcher.stats
    assert (stats.inference_count, stats.execution_count, stats.pending) == (16, 4, 0)
    assert batch_sizes(stats) == {4: 4}
    assert batcher.executed_batch_sizes == {4: 4}


async def test_two_instances_run_two_batches_at_once(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(DELAY_SCHEDULER_ENV, "4")
    gate = threading.Event()
    first, second = FakeInstance(gate), FakeInstance(gate)
    batcher = make_batcher("preferred_batch_size: [2]", [first, second])
    pending = [asyncio.ensure_future(batcher.submit(request(f"r{n}"))) for n in range(4)]
    await wait_for(lambda: first.running.is_set() and second.running.is_set())
    gate.set()
    await asyncio.gather(*pending)
    assert sorted(len(b) for b in first.batches + second.batches) == [2, 2]


async def test_a_higher_priority_request_overtakes(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(DELAY_SCHEDULER_ENV, "3")
    instance = FakeInstance()
    batcher = make_batcher(
        "preferred_batch_size: [1] priority_levels: 2 default_priority_level: 2", [instance]
    )
    await asyncio.gather(
        batcher.submit(request("low1")),
        batcher.submit(request("low2", priority=2)),
        batcher.submit(request("high", priority=1)),
    )
    assert instance.batches == [["high"], ["low1"], ["low2"]]


async def test_a_full_level_rejects_at_enqueue() -> None:
    gate = threading.Event()
    instance = FakeInstance(gate)
    batcher = make_batcher(
        "preferred_batch_size: [1] default_queue_policy { max_queue_size: 1 }", [instance]
    )
    running = asyncio.ensure_future(batcher.submit(request("running")))
    await wait_for(instance.running.is_set)
    queued = asyncio.ensure_future(batcher.submit(request("queued")))
    await asyncio.sleep(0)
    with pytest.raises(ServerError) as caught:
        await batcher.submit(request("overflow"))
    assert (caught.value.code, caught.value.message) == (
        Code.UNAVAILABLE,
        "Exceeds maximum queue size",
    )
    assert batcher.stats.pending == 1
    gate.set()
    await asyncio.gather(running, queued)
    assert batcher.stats.pending == 0


async def test_a_queue_timeout_rejects_while_the_instance_is_busy() -> None:
    gate = threading.Event()
    instance = FakeInstance(gate)
    batcher = make_batcher(
        "preferred_batch_size: [1] default_queue_policy "
        "{ default_timeout_microseconds: 20000 allow_timeout_override: true }",
        [instance],
    )
    running = asyncio.ensure_future(batcher.submit(request("running")))
    await wait_for(instance.running.is_set)
    loop = asyncio.get_running_loop()
    started = loop.time()
    with pytest.raises(ServerError) as caught:
        await batcher.submit(request("short", timeout_us=5000))
    assert loop.time() - started < 0.015  # its own 5 ms, not the 20 ms default
    with pytest.raises(ServerError) as caught:
        await batcher.submit(request("waits"))
    assert (caught.value.code, caught.value.message) == (
        Code.UNAVAILABLE,
        "Request timeout expired",
    )
    assert not gate.is_set()  # rejected before the running execution ended
    gate.set()
    await running
    assert instance.batches == [["running"]]
    assert batcher.stats.pending == 0


async def test_cancelled_requests_are_not_executed() -> None:
    gate = threading.Event()
    instance = FakeInstance(gate)
    batcher = make_batcher("preferred_batch_size: [4]", [instance])
    running = asyncio.ensure_future(batcher.submit(request("running")))
    await wait_for(instance.running.is_set)
    withdrawn = asyncio.ensure_future(batcher.submit(request("withdrawn")))
    flagged_request = request("flagged")
    flagged = asyncio.ensure_future(batcher.submit(flagged_request))
    kept = asyncio.ensure_future(batcher.submit(request("kept")))
    await asyncio.sleep(0)
    assert batcher.stats.pending == 3
    withdrawn.cancel()
    await asyncio.sleep(0)
    assert batcher.stats.pending == 2 and batcher.queue_depths() == {1: 2}
    flagged_request.cancelled = True  # a front end that only sets the flag
    gate.set()
    await asyncio.gather(running, kept)
    with pytest.raises(ServerError) as caught:
        await flagged
    assert caught.value.code == Code.CANCELLED
    assert instance.batches == [["running"], ["kept"]]
    assert batcher.stats.pending == 0


async def test_different_shapes_and_optional_inputs_do_not_share_a_batch(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv(DELAY_SCHEDULER_ENV, "4")
    instance = FakeInstance()
    batcher = make_batcher("", [instance], make_view(dims=(-1,), optional=True))
    odd = request("extra")
    odd.inputs.append(InferInput("EXTRA", "FP32", (1, 1), np.zeros((1, 1), np.float32)))
    await asyncio.gather(
        batcher.submit(request("w4a")),
        batcher.submit(request("w4b")),
        batcher.submit(request("w5", width=5)),
        batcher.submit(odd),
    )
    assert instance.batches == [["w4a", "w4b"], ["w5"], ["extra"]]


async def test_without_isolation_one_bad_request_fails_its_batch(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv(DELAY_SCHEDULER_ENV, "4")
    batcher = make_batcher("preferred_batch_size: [4]", [FakeInstance()])
    names = ["a", "bad", "c", "d"]
    outcomes = await asyncio.gather(
        *(batcher.submit(request(n)) for n in names), return_exceptions=True
    )
    assert all(isinstance(o, ServerError) for o in outcomes)
    assert batcher.stats.execution_count == 0


async def test_error_isolation_fails_only_the_faulty_request(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv(DELAY_SCHEDULER_ENV, "4")
    instance = FakeInstance()
    view = make_view(**{ERROR_ISOLATION_KEY: "true"})
    batcher = make_batcher("preferred_batch_size: [4]", [instance], view)
    names = ["a", "bad", "c", "d"]
    outcomes = await asyncio.gather(
        *(batcher.submit(request(n)) for n in names), return_exceptions=True
    )
    failed = [n for n, o in zip(names, outcomes, strict=True) if isinstance(o, ServerError)]
    assert failed == ["bad"]
    assert instance.batches == [names, ["a", "bad"], ["a"], ["bad"], ["c", "d"]]
    stats = batcher.stats
    assert (stats.execution_count, stats.inference_count) == (2, 3)
    assert batch_sizes(stats) == {1: 1, 2: 1}


def test_isolation_parameters_are_checked() -> None:
    with pytest.raises(ServerError) as caught:
        make_batcher("", [FakeInstance()], make_view(**{ERROR_ISOLATION_KEY: "maybe"}))
    assert caught.value.code == Code.INVALID_ARG


async def test_preserve_ordering_holds_later_responses(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(DELAY_SCHEDULER_ENV, "2")
    gate = threading.Event()
    slow, fast = FakeInstance(gate), FakeInstance()
    batcher = make_batcher("preferred_batch_size: [1] preserve_ordering: true", [fast, slow])
    first = asyncio.ensure_future(batcher.submit(request("first")))
    second = asyncio.ensure_future(batcher.submit(request("second")))
    await wait_for(lambda: slow.running.is_set() and fast.batches)
    # The second request ran on the fast instance, yet its response waits for the first.
    await asyncio.sleep(0.02)
    assert not second.done()
    gate.set()
    await asyncio.gather(first, second)
    assert slow.batches == [["first"]] and fast.batches == [["second"]]


async def test_a_lone_request_waits_out_the_delay() -> None:
    batcher = make_batcher(
        "preferred_batch_size: [4] max_queue_delay_microseconds: 30000", [FakeInstance()]
    )
    loop = asyncio.get_running_loop()
    started = loop.time()
    await batcher.submit(request("alone"))
    assert 0.025 < loop.time() - started < 0.5
    started = loop.time()
    await asyncio.gather(*(batcher.submit(request(f"r{n}")) for n in range(4)))
    assert loop.time() - started < 0.025


def test_latency_targeted_delay_is_zero_at_low_load() -> None:
    control = LatencyTargetedDelay(budget_us=50_000, max_delay_ns=10_000_000)
    assert control.delay_ns(0) == 0  # nothing known yet
    for n in range(5):
        control.on_arrival(n * 1_000_000_000, rows=1)  # one row a second
    assert control.delay_ns(5 * 1_000_000_000) == 0


def test_latency_targeted_delay_grows_under_load_and_backs_off_over_budget() -> None:
    control = LatencyTargetedDelay(budget_us=50_000, max_delay_ns=10_000_000)
    now = 0
    for _ in range(100):
        now += 100_000  # a row every 0.1 ms
        control.on_arrival(now, rows=1)
    assert control.delay_ns(now) == 10_000_000  # the configured maximum, never more
    for _ in range(32):
        control.on_complete(80_000_000)  # p99 80 ms > 50 ms budget
    assert control.p99_ns == 80_000_000
    assert control.delay_ns(now) == 2_500_000  # halved twice
    for _ in range(16 * 600):
        control.on_complete(1_000_000)
    assert control.delay_ns(now) == 10_000_000
    # Gaps between bursts do not count on their own; a long silence does.
    assert control.delay_ns(now + 50_000_000) == 10_000_000
    assert control.delay_ns(now + 101_000_000) == 0


async def test_the_batcher_reports_the_delay_it_uses() -> None:
    view = make_view(**{"dynamic_batching.p99_latency_target_us": "50000"})
    batcher = make_batcher(
        "preferred_batch_size: [8] max_queue_delay_microseconds: 20000", [FakeInstance()], view
    )
    loop = asyncio.get_running_loop()
    assert batcher.current_delay_us == 0
    started = loop.time()
    await batcher.submit(request("alone"))
    assert loop.time() - started < 0.015  # low load: no 20 ms wait
    plain = make_batcher("max_queue_delay_microseconds: 20000", [FakeInstance()])
    assert plain.current_delay_us == 20_000
