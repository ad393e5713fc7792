"""The garbage collector's settings: the young threshold, and freezing what a load left."""

from __future__ import annotations

import gc
import shutil
import weakref
from collections.abc import Iterator
from pathlib import Path

import pytest

from server import collector
from server.core import Core, CoreOptions
from server.devices import FakeDeviceLayer
from server.errors import ServerError
from server.repository.manager import ModelManager
from server.repository.poller import poll_once
from server.scheduler import create_scheduler
from tests.models import write_onnx_identity


@pytest.fixture(autouse=True)
def restore_collector() -> Iterator[None]:
    threshold, enabled = gc.get_threshold(), gc.isenabled()
    yield
    gc.set_threshold(*threshold)
    gc.unfreeze()
    (gc.enable if enabled else gc.disable)()


class Node:
    def __init__(self) -> None:
        self.me = self  # a cycle: only the cyclic collector frees it


def test_tune_raises_only_the_young_threshold() -> None:
    gc.set_threshold(700, 11, 12)
    collector.tune()
    assert gc.get_threshold() == (collector.YOUNG_THRESHOLD, 11, 12)


def test_settle_freezes_what_is_alive() -> None:
    gc.unfreeze()
    node = Node()
    collector.settle()
    assert gc.get_freeze_count() > 0
    assert not any(node is other for other in gc.get_objects())  # frozen objects are skipped


def test_a_cycle_dropped_after_settling_is_freed_by_the_next_settle() -> None:
    node = Node()
    alive = weakref.ref(node)
    collector.settle()
    del node
    gc.collect()
    assert alive() is not None  # frozen: a plain collection does not see it
    collector.settle()
    assert alive() is None


def test_settle_leaves_a_disabled_collector_alone() -> None:
    gc.unfreeze()
    gc.disable()
    collector.settle()
    assert gc.get_freeze_count() == 0
    assert not gc.isenabled()


@pytest.fixture
def settles(monkeypatch: pytest.MonkeyPatch) -> list[int]:
    """Records each call of ``collector.settle`` instead of collecting."""
    calls: list[int] = []
    monkeypatch.setattr(collector, "settle", lambda: calls.append(1))
    return calls


@pytest.fixture
def manager(tmp_path: Path) -> ModelManager:
    """A repository with one ONNX identity model, ``ident``, not loaded yet."""
    write_onnx_identity(tmp_path, "ident", "FP32", (4,), max_batch_size=0)
    return ModelManager([tmp_path], create_scheduler, devices=FakeDeviceLayer())


async def test_a_poll_settles_after_changes_only(
    tmp_path: Path, settles: list[int], manager: ModelManager
) -> None:
    calls = settles
    await poll_once(manager)  # loads the new model
    assert manager.get("ident").state == "READY"
    assert len(calls) == 1
    await poll_once(manager)  # nothing changed
    assert len(calls) == 1
    shutil.rmtree(tmp_path / "ident")
    await poll_once(manager)  # unloads it
    assert "ident" not in manager.models
    assert len(calls) == 2


async def test_loads_and_unloads_through_the_api_settle_even_when_they_fail(
    settles: list[int], manager: ModelManager
) -> None:
    calls = settles
    core = Core(manager, CoreOptions(model_control_mode="explicit"))
    await core.load_model("ident", {})
    assert manager.get("ident").state == "READY"
    assert len(calls) == 1
    with pytest.raises(ServerError):
        await core.load_model("missing", {})
    assert len(calls) == 2
    await core.unload_model("ident", {})
    assert len(calls) == 3
