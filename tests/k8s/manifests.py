"""Load, render and take apart the manifests under ``k8s/`` for the tests next to this file."""

from __future__ import annotations

import importlib.util
import shutil
import subprocess
import sys
from functools import cache
from pathlib import Path
from types import ModuleType
from typing import Any

import yaml

ROOT = Path(__file__).resolve().parents[2]
K8S = ROOT / "k8s"
OVERLAYS = ("gpu", "mig", "cpu")
# Every directory that must render on its own: the overlays users apply, and KServe.
KUSTOMIZATIONS = tuple(f"overlays/{name}" for name in OVERLAYS) + ("kserve",)
APP = "triton-compatible-server"
# Server flag that sets each listener's port, by the service name the manifests give the port.
PORT_FLAGS = {"http": "--http-port", "grpc": "--grpc-port", "metrics": "--metrics-port"}

Resource = dict[str, Any]


@cache
def renderer() -> ModuleType:
    """``scripts/render_k8s.py``, imported by path (``scripts`` is not a package)."""
    path = ROOT / "scripts" / "render_k8s.py"
    spec = importlib.util.spec_from_file_location("render_k8s", path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


def kubectl() -> str | None:
    return shutil.which("kubectl")


def render_with_kubectl(directory: str) -> list[Resource]:
    tool = kubectl()
    assert tool is not None
    result = subprocess.run(
        [tool, "kustomize", str(K8S / directory)], capture_output=True, text=True, timeout=120
    )
    assert result.returncode == 0, result.stderr
    return [doc for doc in yaml.safe_load_all(result.stdout) if doc is not None]


@cache
def _rendered(directory: str) -> tuple[Resource, ...]:
    return tuple(renderer().render(K8S / directory))


def render(directory: str) -> list[Resource]:
    """The objects of one kustomization (deep copies, so tests may change them)."""
    return yaml.safe_load(yaml.safe_dump(list(_rendered(directory))))


def by_kind(resources: list[Resource], kind: str) -> list[Resource]:
    return [res for res in resources if res["kind"] == kind]


def one(resources: list[Resource], kind: str) -> Resource:
    found = by_kind(resources, kind)
    assert len(found) == 1, f"expected one {kind}, found {len(found)}"
    return found[0]


def server_container(deployment: Resource) -> dict[str, Any]:
    containers = deployment["spec"]["template"]["spec"]["containers"]
    return next(c for c in containers if c["name"] == "server")


def flag_values(args: list[str]) -> dict[str, str]:
    """``--flag=value`` and ``--flag value`` arguments as a mapping (the last one wins)."""
    values: dict[str, str] = {}
    index = 0
    while index < len(args):
        arg = args[index]
        assert arg.startswith("--"), f"unexpected positional argument {arg!r}"
        if "=" in arg:
            flag, value = arg.split("=", 1)
        else:
            flag = arg
            value = args[index + 1]
            index += 1
        values[flag] = value
        index += 1
    return values


def with_flags(args: list[str], replacements: dict[str, str]) -> list[str]:
    """``args`` with the given flags' values replaced; each flag must already be present."""
    missing = set(replacements) - set(flag_values(args))
    assert not missing, f"flags not in the manifest's args: {sorted(missing)}"
    rewritten: list[str] = []
    skip_next = False
    for index, arg in enumerate(args):
        if skip_next:
            skip_next = False
            continue
        flag = arg.split("=", 1)[0]
        if flag in replacements:
            rewritten.append(f"{flag}={replacements[flag]}")
            skip_next = "=" not in arg and index + 1 < len(args)
        else:
            rewritten.append(arg)
    return rewritten


def container_port_numbers(container: dict[str, Any]) -> dict[str, int]:
    return {port["name"]: port["containerPort"] for port in container.get("ports", [])}


def probe_port(container: dict[str, Any], probe: dict[str, Any]) -> int:
    """The container port number a probe's ``httpGet.port`` (a name or a number) refers to."""
    port = probe["httpGet"]["port"]
    if isinstance(port, int):
        return port
    return container_port_numbers(container)[port]


def listener_for_port(args: list[str], port: int) -> str:
    """The listener (http, grpc or metrics) the server opens on ``port`` with these args."""
    flags = flag_values(args)
    owners = [name for name, flag in PORT_FLAGS.items() if int(flags.get(flag, -1)) == port]
    assert len(owners) == 1, f"port {port} is not exactly one listener of {args}"
    return owners[0]


def read_text(relative: str) -> str:
    return (ROOT / relative).read_text()
