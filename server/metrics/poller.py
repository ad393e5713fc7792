"""Polls CPU and GPU gauges every ``--metrics-interval-ms`` on a background thread, so a
scrape only reads the last snapshot and never waits on the OS or on NVML."""

from __future__ import annotations

import logging
import threading
from dataclasses import dataclass, field

import psutil

from server.affinity import LOOP_CPU
from server.devices import DeviceLayer, GpuDevice, GpuSample

log = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class CpuSample:
    utilization: float  # 0.0-1.0 over the last interval
    memory_total_bytes: int
    memory_used_bytes: int


@dataclass(frozen=True, slots=True)
class Snapshot:
    cpu: CpuSample | None = None
    gpus: tuple[GpuSample, ...] = ()
    # Joules each device has used since this server started polling it.
    energy_j: dict[str, float] = field(default_factory=dict)


class SystemPoller:
    def __init__(
        self,
        devices: DeviceLayer | None,
        *,
        interval_s: float,
        cpu: bool,
    ) -> None:
        self._devices = devices
        self._gpus: list[GpuDevice] = []
        self._interval_s = max(interval_s, 0.01)
        self._cpu = cpu
        self._energy_base: dict[str, int] = {}
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self.snapshot = Snapshot()

    def start(self) -> None:
        if self._devices is not None:
            self._gpus = self._devices.gpus()
        if self._cpu:
            psutil.cpu_percent(interval=None)  # the first reading only sets the baseline
        self.poll_once()
        if not self._cpu and not self._gpus:
            return
        self._thread = threading.Thread(target=self._run, name="metrics-poller", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=5)

    def _run(self) -> None:
        LOOP_CPU.release_current_thread()
        while not self._stop.wait(self._interval_s):
            try:
                self.poll_once()
            except Exception:
                log.exception("metrics poll failed")

    def poll_once(self) -> None:
        cpu = _cpu_sample() if self._cpu else None
        gpus: tuple[GpuSample, ...] = ()
        energy: dict[str, float] = {}
        if self._devices is not None and self._gpus:
            gpus = tuple(self._devices.sample(self._gpus))
            for sample in gpus:
                if sample.energy_mj is None:
                    continue
                base = self._energy_base.setdefault(sample.uuid, sample.energy_mj)
                energy[sample.uuid] = max(sample.energy_mj - base, 0) / 1000.0
        # One reference swap: a scrape sees either the old or the new snapshot, whole.
        self.snapshot = Snapshot(cpu, gpus, energy)


def _cpu_sample() -> CpuSample:
    memory = psutil.virtual_memory()
    # Used as the kernel counts it for this purpose: total less what is available.
    return CpuSample(
        utilization=psutil.cpu_percent(interval=None) / 100.0,
        memory_total_bytes=int(memory.total),
        memory_used_bytes=int(memory.total - memory.available),
    )
