"""Model lifecycle: which models and versions exist, their states, loading and unloading.

Loading (config pipeline, framework sessions) runs in a worker thread; the scheduler of a
version is created on the event loop once its instances exist.
"""

from __future__ import annotations

import asyncio
import logging
import shutil
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from server.backends.base import InstanceSpec, ModelInstance
from server.backends.registry import get_backend
from server.devices import DeviceLayer
from server.errors import (
    Code,
    ServerError,
    internal,
    invalid_arg,
    not_found,
    unavailable,
    unsupported,
)
from server.repository import config as cfg
from server.repository.view import ModelView, build_view
from server.repository.warmup import warmup
from server.scheduler.base import Scheduler
from server.stats import ModelStats

log = logging.getLogger(__name__)

READY, UNAVAILABLE, LOADING, UNLOADING = "READY", "UNAVAILABLE", "LOADING", "UNLOADING"

SchedulerFactory = Callable[[Any, ModelView, Sequence[ModelInstance], ModelStats], Scheduler]


@dataclass(slots=True)
class LoadedVersion:
    version: int
    state: str
    reason: str = ""
    config: Any = None
    view: ModelView | None = None
    scheduler: Scheduler | None = None
    stats: ModelStats | None = None
    instances: list[InstanceSpec] = field(default_factory=list)


@dataclass(slots=True)
class ModelEntry:
    name: str
    path: Path | None
    versions: dict[int, LoadedVersion] = field(default_factory=dict)
    # The model's own failure (bad config) when no version could even be tried.
    reason: str = ""
    state: str = ""
    unloaded_by_request: bool = False
    mtime: float = 0.0


class ModelManager:
    def __init__(
        self,
        repositories: Sequence[Path],
        scheduler_factory: SchedulerFactory,
        *,
        autocomplete: bool = True,
        devices: DeviceLayer,
        config_name: str = "",
        listeners: Sequence[Callable[[str, LoadedVersion, bool], None]] = (),
    ) -> None:
        self.repositories = [Path(r) for r in repositories]
        self._scheduler_factory = scheduler_factory
        self._autocomplete = autocomplete
        self._devices = devices
        self.devices = devices
        self._config_name = config_name
        self.models: dict[str, ModelEntry] = {}
        self._locks: dict[str, asyncio.Lock] = {}
        # Called with (model name, version, loaded?) so metrics can add or drop series.
        self.listeners = list(listeners)

    # --- discovery -----------------------------------------------------------------
    def scan(self) -> dict[str, Path]:
        found: dict[str, Path] = {}
        for repo in self.repositories:
            if not repo.is_dir():
                continue
            for child in sorted(repo.iterdir()):
                if child.is_dir() and not child.name.startswith("."):
                    if child.name in found:
                        log.error("model '%s' appears in more than one repository", child.name)
                        continue
                    found[child.name] = child
        for name, path in found.items():
            entry = self.models.get(name)
            if entry is None:
                self.models[name] = ModelEntry(name, path)
            elif entry.path is None:
                entry.path = path
        return found

    # --- lookups for the core ------------------------------------------------------
    def get(self, name: str, version: str = "") -> LoadedVersion:
        entry = self.models.get(name)
        if entry is None or (not entry.versions and not entry.unloaded_by_request):
            raise not_found(f"Request for unknown model: '{name}' is not found")
        if version:
            number = parse_version(version)
            loaded = entry.versions.get(number)
            if loaded is None:
                raise not_found(
                    f"Request for unknown model: '{name}' version {number} is not found"
                )
            if loaded.state != READY:
                raise unavailable(
                    f"Request for unknown model: '{name}' version {number} is not at ready state"
                )
            return loaded
        ready = [v for v in entry.versions.values() if v.state == READY]
        if not ready:
            raise not_found(f"Request for unknown model: '{name}' has no available versions")
        return max(ready, key=lambda v: v.version)

    def ready_versions(self) -> list[LoadedVersion]:
        return [v for e in self.models.values() for v in e.versions.values() if v.state == READY]

    def all_ready(self) -> bool:
        """Strict readiness: every model the server knows is READY, unless it was unloaded
        on request."""
        for entry in self.models.values():
            if entry.unloaded_by_request:
                continue
            if entry.reason or entry.state == LOADING:
                return False
            if not entry.versions:
                continue
            if any(v.state != READY for v in entry.versions.values()):
                return False
        return True

    def index(self, ready_only: bool = False) -> list[dict[str, str]]:
        rows: list[dict[str, str]] = []
        repositories = set(self.repositories)
        for name in sorted(self.models):
            entry = self.models[name]
            if entry.path is None or entry.path.parent not in repositories:
                continue  # loaded from uploaded files: Triton's index lists repository models only
            if entry.versions:
                for number in sorted(entry.versions):
                    loaded = entry.versions[number]
                    if ready_only and loaded.state != READY:
                        continue
                    row = {"name": name, "version": str(number), "state": loaded.state}
                    if loaded.reason:
                        row["reason"] = loaded.reason
                    rows.append(row)
            elif not ready_only:
                row = {"name": name}
                if entry.state:
                    row["state"] = entry.state
                    row["reason"] = entry.reason
                rows.append(row)
        return rows

    # --- load / unload -------------------------------------------------------------
    def _lock(self, name: str) -> asyncio.Lock:
        return self._locks.setdefault(name, asyncio.Lock())

    async def load(
        self, name: str, override: Any | None = None, files: dict[str, bytes] | None = None
    ) -> None:
        """Load or reload ``name``; raises ServerError when no version becomes READY."""
        async with self._lock(name):
            self.scan()
            entry = self.models.get(name)
            if entry is None or entry.path is None:
                if override is None:
                    raise internal(f"failed to load '{name}', failed to poll from model repository")
                entry = self.models.setdefault(name, ModelEntry(name, None))
            if files:
                if override is None:
                    raise internal(f"failed to load '{name}', failed to poll from model repository")
                entry.path = _write_override_files(name, files)
            entry.state = LOADING
            entry.unloaded_by_request = False
            loop = asyncio.get_running_loop()
            try:
                config, prepared = await loop.run_in_executor(None, self._prepare, entry, override)
            except ServerError as exc:
                entry.state, entry.reason = UNAVAILABLE, exc.message
                log.error("failed to load '%s': %s", name, exc.message)
                if isinstance(exc, cfg.ConfigReadError):
                    # Triton reports an unreadable configuration as a failed repository poll.
                    raise internal(
                        f"failed to load '{name}', failed to poll from model repository"
                    ) from None
                raise ServerError(
                    exc.code, f"load failed for model '{name}': {exc.message}\n"
                ) from None
            old = entry.versions
            new: dict[int, LoadedVersion] = {}
            for number, outcome in prepared.items():
                if isinstance(outcome, ServerError):
                    new[number] = LoadedVersion(number, UNAVAILABLE, outcome.message, config)
                    log.error("failed to load '%s' version %d: %s", name, number, outcome.message)
                    continue
                view, instances, specs, seconds = outcome
                stats = ModelStats(name, str(number), load_duration_s=seconds)
                scheduler = self._scheduler_factory(config, view, instances, stats)
                new[number] = LoadedVersion(
                    number, READY, "", config, view, scheduler, stats, specs
                )
                log.info("successfully loaded '%s' version %d", name, number)
            entry.versions = new
            entry.state, entry.reason = "", ""
            entry.mtime = _tree_mtime(entry.path)
            for loaded in old.values():
                await self._retire(name, loaded)
            for loaded in new.values():
                if loaded.state == READY:
                    self._notify(name, loaded, True)
            failed = [v for v in new.values() if v.state != READY]
            if failed:
                first = failed[0]
                raise invalid_arg(
                    f"load failed for model '{name}': version {first.version} is at UNAVAILABLE state: {first.reason};"
                )

    async def unload(self, name: str) -> None:
        async with self._lock(name):
            entry = self.models.get(name)
            if entry is None:
                return  # as in Triton, unloading what is not loaded succeeds
            old, entry.versions = entry.versions, {}
            for loaded in old.values():
                loaded.state = UNLOADING
            for loaded in old.values():
                await self._retire(name, loaded)
            entry.versions = {
                number: LoadedVersion(number, UNAVAILABLE, "unloaded") for number in old
            }
            entry.unloaded_by_request = True
            entry.state, entry.reason = "", ""

    async def unload_all(self, drain_timeout: float) -> None:
        for name in list(self.models):
            entry = self.models[name]
            for loaded in entry.versions.values():
                if loaded.scheduler is not None:
                    await loaded.scheduler.stop(drain_timeout)

    async def _retire(self, name: str, loaded: LoadedVersion) -> None:
        if loaded.scheduler is not None:
            self._notify(name, loaded, False)
            await loaded.scheduler.stop(drain_timeout=30.0)
            loaded.scheduler = None
            log.info("successfully unloaded '%s' version %d", name, loaded.version)

    def _notify(self, name: str, loaded: LoadedVersion, is_loaded: bool) -> None:
        for listener in self.listeners:
            try:
                listener(name, loaded, is_loaded)
            except Exception:
                log.exception("model lifecycle listener failed")

    # --- the blocking part of a load (worker thread) -------------------------------
    def _prepare(self, entry: ModelEntry, override: Any | None) -> tuple[Any, dict[int, Any]]:
        model_dir = entry.path or Path(".")
        name = entry.name
        gpus = self._devices.gpus()
        backend_holder: dict[str, Any] = {}

        def autocomplete(config: Any, directory: Path) -> None:
            # Before normalization resolves KIND_AUTO, so the CPU fallback can be logged.
            backend_holder["auto_groups"] = _auto_groups(config)
            backend = get_backend(config.backend) if config.backend else None
            backend_holder["backend"] = backend
            if backend is not None and backend_holder["auto_groups"]:
                # Without a GPU normalization puts KIND_AUTO on the CPU; with one that the
                # backend cannot use, it is put there here.
                reason = "no usable GPU was found" if not gpus else backend.gpu_unusable_reason()
                if reason is not None:
                    if gpus:
                        _auto_groups_on_cpu(config)
                    for group in backend_holder["auto_groups"]:
                        log.log(
                            logging.WARNING if gpus else logging.INFO,
                            "model '%s': instance group '%s' is KIND_AUTO and %s; running it on CPU",
                            name,
                            group,
                            reason,
                        )
            if backend is not None and self._autocomplete:
                versions = cfg.version_dirs(directory)
                latest = versions[max(versions)] if versions else None
                backend.autocomplete(config, directory, latest)

        try:
            config = cfg.load_model_config(
                model_dir,
                name,
                override=override,
                autocomplete=autocomplete,
                gpu_count=len(gpus),
                config_name=self._config_name,
            )
        except ServerError as exc:
            if exc.code == Code.UNAVAILABLE or "backend" in exc.message:
                raise
            raise
        cfg.log_unused_fields(config)
        backend = backend_holder.get("backend")
        if backend is None and config.platform == "ensemble":
            raise unsupported(
                f"ensemble model '{name}' cannot be served: this server does not run ensembles yet"
            )
        if backend is None:
            raise invalid_arg(f"unable to determine the backend of model '{name}'")
        labels = _read_labels(config, model_dir)
        selected = select_versions(config, cfg.version_dirs(model_dir))
        if not selected:
            raise invalid_arg(
                f"at least one version must be available under the version policy of model '{name}'"
            )
        prepared: dict[int, Any] = {}
        for number, version_dir in selected.items():
            started = time.monotonic()
            try:
                view = build_view(config, str(number), labels)
                specs = instance_specs(config, gpus)
                instances = []
                try:
                    for spec in specs:
                        instances.append(backend.load(config, view, version_dir, spec))
                        warmup(config, view, instances[-1], spec.name, model_dir)
                except BaseException:
                    for instance in instances:
                        _unload_quietly(instance)
                    raise
                prepared[number] = (view, instances, specs, time.monotonic() - started)
                for spec in specs:
                    where = spec.kind if spec.kind != "GPU" else _describe_gpu(spec, gpus)
                    log.info(
                        "model '%s' version %d instance '%s' on %s", name, number, spec.name, where
                    )
            except ServerError as exc:
                prepared[number] = exc
            except Exception as exc:  # a framework's own error
                log.exception("loading '%s' version %d failed", name, number)
                prepared[number] = internal(str(exc))
        return config, prepared


def parse_version(version: str) -> int:
    try:
        number = int(version)
    except ValueError:
        number = -1
    if number < 0 or not version.strip().lstrip("+").isdigit():
        raise invalid_arg(
            f"failed to get model version from specified version string '{version}' "
            "(details: stol), version should be an integral value > 0"
        )
    return number


def select_versions(config: Any, available: dict[int, Path]) -> dict[int, Path]:
    policy = config.version_policy
    choice = policy.WhichOneof("policy_choice")
    if choice == "all":
        return dict(available)
    if choice == "specific":
        return {v: available[v] for v in policy.specific.versions if v in available}
    count = policy.latest.num_versions  # 0 selects none, and the load fails, as in Triton
    return {v: available[v] for v in sorted(available, reverse=True)[:count]}


def instance_specs(config: Any, gpus: Sequence[Any]) -> list[InstanceSpec]:
    from server.protocol.generated import model_config_pb2 as mc

    specs: list[InstanceSpec] = []
    for group in config.instance_group:
        if group.kind == mc.ModelInstanceGroup.KIND_GPU:
            # The GPU ids were checked against ``gpus`` by cfg.validate_instance_groups.
            # As Triton names and orders them: "<group>_<index>" on each listed GPU in turn.
            for index in range(group.count):
                for gpu in group.gpus:
                    device = gpus[gpu]
                    specs.append(
                        InstanceSpec(
                            f"{group.name}_{index}",
                            group.name,
                            "GPU",
                            gpu,
                            device.uuid,
                            getattr(device, "display_name", device.name),
                        )
                    )
        else:
            kind = "MODEL" if group.kind == mc.ModelInstanceGroup.KIND_MODEL else "CPU"
            for index in range(group.count):
                specs.append(InstanceSpec(f"{group.name}_{index}", group.name, kind))
    return specs


def _auto_groups(config: Any) -> list[str]:
    from server.protocol.generated import model_config_pb2 as mc

    if not config.instance_group:
        return [config.name]  # the group normalization adds
    return [
        group.name or f"{config.name}_{index}"
        for index, group in enumerate(config.instance_group)
        if group.kind == mc.ModelInstanceGroup.KIND_AUTO
    ]


def _unload_quietly(instance: ModelInstance) -> None:
    """Release an instance of a version that failed to load; its own failure is only logged."""
    try:
        instance.unload()
    except Exception:
        log.exception("unloading an instance of a version that failed to load")


def _auto_groups_on_cpu(config: Any) -> None:
    """Place the KIND_AUTO groups (or the group normalization would add) on the CPU."""
    from server.protocol.generated import model_config_pb2 as mc

    if not config.instance_group:
        config.instance_group.add(name=config.name, kind=mc.ModelInstanceGroup.KIND_CPU)
    for group in config.instance_group:
        if group.kind == mc.ModelInstanceGroup.KIND_AUTO:
            group.kind = mc.ModelInstanceGroup.KIND_CPU


def _describe_gpu(spec: InstanceSpec, gpus: Sequence[Any]) -> str:
    device = gpus[spec.device_id] if 0 <= spec.device_id < len(gpus) else None
    describe = getattr(device, "describe", None)
    return describe() if callable(describe) else f"GPU {spec.device_id} ({spec.device_uuid})"


def _read_labels(config: Any, model_dir: Path) -> dict[str, tuple[str, ...]]:
    labels: dict[str, tuple[str, ...]] = {}
    for output in config.output:
        if output.label_filename:
            path = model_dir / output.label_filename
            try:
                labels[output.name] = tuple(path.read_text().splitlines())
            except OSError as exc:
                raise invalid_arg(
                    f"failed to open text file for read {path}: {exc.strerror}"
                ) from None
    return labels


def _write_override_files(name: str, files: dict[str, bytes]) -> Path:
    import tempfile

    root = Path(tempfile.mkdtemp(prefix=f"model-{name}-"))
    try:
        for relative, content in files.items():
            try:
                target = (root / relative).resolve()
                if root.resolve() not in target.parents:
                    raise invalid_arg(f"file path '{relative}' escapes the model directory")
                target.parent.mkdir(parents=True, exist_ok=True)
                target.write_bytes(content)
            except OSError as exc:
                # A name the filesystem refuses (longer than NAME_MAX, say) is the client's
                # mistake, not a server failure.
                raise invalid_arg(
                    f"Invalid file path '{relative}' for model '{name}': {exc.strerror}"
                ) from None
    except ServerError:
        shutil.rmtree(root, ignore_errors=True)
        raise
    return root


def _tree_mtime(path: Path | None) -> float:
    if path is None or not path.exists():
        return 0.0
    latest = path.stat().st_mtime
    for child in path.rglob("*"):
        try:
            latest = max(latest, child.stat().st_mtime)
        except OSError:
            continue
    return latest
