"""The ``/metrics`` listener: Triton's families from our own writer, then the families of
custom-metric providers (models' own metrics), then the extras from prometheus-client, in
one Prometheus text response."""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable, MutableMapping
from typing import Any

from server.devices import DeviceLayer
from server.metrics import custom
from server.metrics.config import MetricsOptions, parse_metrics_config
from server.metrics.exposition import CONTENT_TYPE, render
from server.metrics.extras import Extras
from server.metrics.families import all_families
from server.metrics.latency import LatencyRecorder
from server.metrics.poller import SystemPoller

log = logging.getLogger(__name__)

Scope = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[MutableMapping[str, Any]]]
Send = Callable[[MutableMapping[str, Any]], Awaitable[None]]

_PATHS = ("/metrics", "/metrics/")


class MetricsApp:
    """A bare ASGI app: one route, no framework work on the scrape path."""

    def __init__(
        self,
        core: Any,
        options: MetricsOptions,
        poller: SystemPoller,
        *,
        cpu: bool,
        gpu: bool,
    ) -> None:
        self.core = core
        self.options = options
        self.poller = poller
        self._cpu = cpu
        self._gpu = gpu
        self.extras = Extras(self._versions)
        if options.summary_latencies or options.histogram_latencies:
            core.manager.listeners.append(self._on_model)
            for loaded in self._versions():
                self._attach(loaded)

    def _versions(self) -> list[Any]:
        return [v for v in self.core.manager.ready_versions() if v.stats is not None]

    def _on_model(self, name: str, loaded: Any, is_loaded: bool) -> None:
        if is_loaded:
            self._attach(loaded)

    def _attach(self, loaded: Any) -> None:
        if loaded.stats is None or loaded.stats.observer is not None:
            return
        decoupled = bool(getattr(loaded.view, "decoupled", False))
        recorder = LatencyRecorder(self.options, decoupled)
        if recorder.active:
            loaded.stats.observer = recorder

    def render(self) -> bytes:
        versions = self._versions()
        if self.options.summary_latencies or self.options.histogram_latencies:
            for loaded in versions:
                self._attach(loaded)
        own = all_families(
            versions, self.poller.snapshot, self.options, cpu=self._cpu, gpu=self._gpu
        )
        text = render(own + custom.families(f.name for f in own))
        try:
            extras = self.extras.render()
        except Exception:  # Triton's families must reach the autoscaler regardless
            log.exception("rendering the extra metrics failed")
            extras = b""
        return text.encode() + extras

    def close(self) -> None:
        self.poller.stop()
        if self._on_model in self.core.manager.listeners:
            self.core.manager.listeners.remove(self._on_model)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            return
        path, method = scope["path"], scope["method"]
        if path not in _PATHS:
            # Triton answers any other path on this port with an empty 200.
            await _respond(send, 200, b"", "text/plain; charset=utf-8")
        elif method != "GET":
            await _respond(send, 405, b'{"error":"Method Not Allowed"}', "text/plain", allow=True)
        else:
            await _respond(send, 200, self.render(), CONTENT_TYPE)


async def _respond(
    send: Send, status: int, body: bytes, content_type: str, *, allow: bool = False
) -> None:
    headers = [
        (b"content-type", content_type.encode()),
        (b"content-length", str(len(body)).encode()),
    ]
    if allow:
        headers.append((b"allow", b"GET"))
    await send({"type": "http.response.start", "status": status, "headers": headers})
    await send({"type": "http.response.body", "body": body})


def create_metrics_app(core: Any, settings: Any, devices: DeviceLayer | None = None) -> MetricsApp:
    """The metrics listener's app; starts the CPU/GPU poller (a daemon thread)."""
    try:
        options = parse_metrics_config(settings.metrics_config)
    except ValueError as exc:
        raise SystemExit(str(exc)) from None
    layer = devices if devices is not None else getattr(core.manager, "devices", None)
    gpu = bool(settings.allow_gpu_metrics) and layer is not None
    poller = SystemPoller(
        layer if gpu else None,
        interval_s=settings.metrics_interval_ms / 1000.0,
        cpu=bool(settings.allow_cpu_metrics),
    )
    poller.start()
    return MetricsApp(core, options, poller, cpu=bool(settings.allow_cpu_metrics), gpu=gpu)
