"""Composition root: builds the core, loads the models, runs the HTTP, gRPC and metrics
listeners on one event loop, and owns signals and the shutdown order."""

from __future__ import annotations

import asyncio
import contextlib
import errno
import logging
import signal
import socket
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import uvicorn

from server import collector
from server.affinity import LOOP_CPU
from server.cli import Settings
from server.core import Core, CoreOptions
from server.devices import DeviceLayer, default_layer
from server.errors import ServerError
from server.repository.manager import ModelManager
from server.scheduler import create_scheduler

log = logging.getLogger("server")

# Idle keep-alive connections are closed after this many seconds.
KEEP_ALIVE_SECS = 60


class _Uvicorn(uvicorn.Server):
    """uvicorn without its own signal handling: the app decides when listeners close."""

    @contextlib.contextmanager
    def capture_signals(self) -> Iterator[None]:
        yield


class StartError(Exception):
    """A service that could not start, worded as tritonserver words it."""


def bind_socket(address: str, port: int, service: str = "HTTP") -> socket.socket:
    host = address
    if host.startswith("ipv6:"):
        host = host[5:]
    host = host.strip("[]")
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind((host, port))
    except OSError as exc:
        sock.close()
        where = f"Socket '{address}:{port}'"
        reason = "already in use" if exc.errno == errno.EADDRINUSE else f"- {exc.strerror or exc}"
        raise StartError(
            f"failed to start {service} service: Unavailable - {where} {reason}"
        ) from None
    sock.listen(2048)
    sock.set_inheritable(True)
    return sock


def _uvicorn_server(app: Any, settings: Settings) -> _Uvicorn:
    config = uvicorn.Config(
        app,
        loop="none",
        http="httptools",
        lifespan="off",
        # Triton sends neither header.
        server_header=False,
        date_header=False,
        access_log=False,
        log_config=None,
        timeout_keep_alive=KEEP_ALIVE_SECS,
        h11_max_incomplete_event_size=settings.http_max_input_size,
    )
    return _Uvicorn(config)


def build_core(settings: Settings, devices: DeviceLayer | None = None) -> Core:
    manager = ModelManager(
        [Path(p) for p in settings.model_repositories],
        create_scheduler,
        autocomplete=settings.autocomplete,
        devices=devices or default_layer(),
        config_name=settings.model_config_name,
    )
    return Core(
        manager,
        CoreOptions(
            server_id=settings.server_id,
            strict_readiness=settings.strict_readiness,
            model_control_mode=settings.model_control_mode,
            allow_client_shm=settings.allow_client_shm,
        ),
    )


async def load_initial_models(core: Core, settings: Settings) -> list[str]:
    """Load what the control mode says to load; return the names that failed."""
    manager = core.manager
    found = manager.scan()
    if settings.model_control_mode == "explicit":
        names = sorted(found) if "*" in settings.load_models else list(settings.load_models)
    else:
        names = sorted(found)
    limiter = asyncio.Semaphore(4)

    async def load(name: str) -> str | None:
        async with limiter:
            try:
                await manager.load(name)
            except ServerError as exc:
                log.error("%s", exc.message)
                return name
        return None

    results = await asyncio.gather(*(load(n) for n in names))
    return [name for name in results if name]


class ServerApp:
    def __init__(self, settings: Settings, core: Core) -> None:
        self.settings = settings
        self.core = core
        self._servers: list[_Uvicorn] = []
        self._http: Any = None
        self._grpc: Any = None
        self._stop = asyncio.Event()
        self._background: list[asyncio.Task[Any]] = []
        self._poller: asyncio.Task[None] | None = None

    async def start(self) -> None:
        s = self.settings
        if s.allow_http:
            from server.http.app import create_app
            from server.http.server import HttpServer

            routes = _optional("server.http.extensions", "register")
            app = create_app(self.core, max_input_size=s.http_max_input_size, extra_routes=routes)
            endpoint = app.infer_endpoint
            assert endpoint is not None
            self._http = HttpServer(
                app,
                infer=endpoint.answer_request,
                too_large=endpoint.too_large,
                max_input_size=s.http_max_input_size,
                keep_alive=KEEP_ALIVE_SECS,
            )
            sock = bind_socket(s.http_address, s.http_port, "HTTP")
            await self._http.start(sock)
            log.info("Started HTTPService at %s:%d", s.http_address, sock.getsockname()[1])
        if s.allow_grpc:
            grpc_start = _optional("server.grpc.server", "start")
            if grpc_start is None:
                log.warning("gRPC front end is not available in this build")
            else:
                self._grpc, port = await grpc_start(self.core, s)
                log.info("Started GRPCInferenceService at %s:%d", s.grpc_address, port)
        if s.allow_metrics:
            metrics_app = _optional("server.metrics.endpoint", "create_metrics_app")
            if metrics_app is not None:
                await self._serve_uvicorn(
                    metrics_app(self.core, s),
                    s.metrics_bind_address,
                    s.metrics_port,
                    "Metrics Service",
                )
        if s.model_control_mode == "poll":
            self._poller = asyncio.create_task(self._poll())

    async def _serve_uvicorn(self, app: Any, address: str, port: int, label: str) -> None:
        sock = bind_socket(address, port, "Metrics")
        server = _uvicorn_server(app, self.settings)
        self._servers.append(server)
        task = asyncio.create_task(server.serve(sockets=[sock]))
        self._background.append(task)
        while not server.started:
            if task.done():
                task.result()
                raise RuntimeError(f"{label} failed to start")
            await asyncio.sleep(0.005)
        bound = sock.getsockname()
        log.info("Started %s at %s:%d", label, address, bound[1])

    async def _poll(self) -> None:
        from server.repository.poller import poll_once

        while True:
            await asyncio.sleep(self.settings.repository_poll_secs)
            try:
                await poll_once(self.core.manager)
            except Exception:
                log.exception("repository poll failed")

    def request_stop(self, sig: int = signal.SIGTERM) -> None:
        # Ctrl-C at a terminal skips the grace period that SIGTERM gives load balancers.
        if sig == signal.SIGINT:
            self.settings.exit_grace_secs = 0.0
        self._stop.set()

    async def wait_and_shutdown(self) -> None:
        await self._stop.wait()
        s = self.settings
        log.info("shutting down: readiness is now false")
        self.core.exiting = True
        if self._poller is not None:
            self._poller.cancel()
        if s.exit_grace_secs > 0:
            await asyncio.sleep(s.exit_grace_secs)
        self.core.accepting = False
        await self._drain(s.exit_timeout_secs)
        if self._grpc is not None:
            await self._grpc.stop(grace=1.0)
        if self._http is not None:
            await self._http.shutdown(timeout=1.0)
        for server in self._servers:
            server.should_exit = True
        await asyncio.gather(*self._background, return_exceptions=True)
        await self.core.manager.unload_all(drain_timeout=1.0)
        log.info("server stopped")

    async def _drain(self, timeout: float) -> None:
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        while loop.time() < deadline:
            inflight = sum(
                v.scheduler.inflight() for v in self.core.manager.ready_versions() if v.scheduler
            )
            if inflight == 0:
                return
            log.info("waiting for %d in-flight requests", inflight)
            await asyncio.sleep(0.05)


def _optional(module: str, attribute: str) -> Any:
    import importlib

    try:
        return getattr(importlib.import_module(module), attribute)
    except ImportError as exc:
        if exc.name and module.startswith(exc.name):
            return None
        raise


async def serve(settings: Settings) -> int:
    LOOP_CPU.configure(settings.python_shares_loop_cpu)
    # Threads the loop's thread starts take every CPU, not the one it may be pinned to.
    asyncio.get_running_loop().set_default_executor(
        ThreadPoolExecutor(thread_name_prefix="server", initializer=LOOP_CPU.release_current_thread)
    )
    core = build_core(settings)
    core.activate()
    failed = await load_initial_models(core, settings)
    if failed and settings.exit_on_error:
        log.error(
            "exiting: failed to load model(s) %s (use --exit-on-error=false to serve the others)",
            ", ".join(failed),
        )
        await core.manager.unload_all(drain_timeout=1.0)
        return 1
    core.started = True
    collector.tune()
    collector.settle()
    app = ServerApp(settings, core)
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, app.request_stop, sig)
    try:
        await app.start()
    except StartError as exc:
        log.error("%s", exc)
        app.request_stop(signal.SIGINT)  # no grace period: nothing was ever ready
        await app.wait_and_shutdown()
        return 1
    await app.wait_and_shutdown()
    return 0


def run(settings: Settings) -> int:
    try:
        import uvloop
    except ImportError:  # pragma: no cover - uvloop is a dependency on Linux and macOS
        return asyncio.run(serve(settings))
    with asyncio.Runner(loop_factory=uvloop.new_event_loop) as runner:
        return runner.run(serve(settings))
