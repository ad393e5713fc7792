"""Regenerate the Python protobuf and gRPC modules in server/protocol/generated.

    python scripts/gen_protos.py           # rewrite the committed modules
    python scripts/gen_protos.py --check   # exit 1 if they differ from a fresh build

protoc's output is post-processed in two ways:

* imports between the modules become package-relative, so the package works from
  any working directory and never shadows another top-level ``model_config_pb2``;
* descriptors go into a private ``DescriptorPool`` (``_pool.POOL``) instead of the
  process-wide default pool. tritonclient registers the very same full names
  (``inference.ModelConfig`` and friends) in the default pool, and both are
  imported into one process by the tests and by the Python backend. Two
  registrations of one name in one pool fail with "duplicate symbol".

protoc also emits version guards that demand runtimes at least as new as
itself. The protobuf guard is removed (the emitted code runs on protobuf 5.26,
the floor in pyproject.toml) and the grpcio guard is lowered to MIN_GRPCIO, the
oldest grpcio that accepts the emitted stubs.
"""

from __future__ import annotations

import argparse
import difflib
import importlib.metadata
import re
import sys
import tempfile
from collections.abc import Callable
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
PROTO_DIR = REPO / "proto"
OUT_DIR = REPO / "server" / "protocol" / "generated"
PROTOS = ("model_config.proto", "grpc_service.proto", "health.proto")
SERVICE_MODULES = ("grpc_service", "health")
MIN_GRPCIO = "1.64.0"

POOL_MODULE = '''\
"""The descriptor pool that every module of this package registers into.

Kept apart from protobuf's default pool so that these messages can live in one
process with tritonclient's copies, which use the same full names.
"""

from google.protobuf import descriptor_pool

POOL = descriptor_pool.DescriptorPool()
'''

INIT_MODULE = '''\
"""Protobuf and gRPC code generated from proto/ by scripts/gen_protos.py.

Do not edit; change the .proto files and regenerate. Descriptors live in the
private pool ``_pool.POOL``, not in protobuf's default pool.
"""
'''


def _tools_version() -> str:
    return importlib.metadata.version("grpcio-tools")


def _header(name: str) -> str:
    return (
        f"# {name}: generated from proto/ by scripts/gen_protos.py with "
        f"grpcio-tools {_tools_version()}. Do not edit.\n"
    )


def _run_protoc(dest: Path) -> None:
    import grpc_tools
    from grpc_tools import protoc

    well_known = Path(grpc_tools.__file__).parent / "_proto"
    args = [
        "grpc_tools.protoc",
        f"-I{PROTO_DIR}",
        f"-I{well_known}",
        f"--python_out={dest}",
        f"--pyi_out={dest}",
        f"--grpc_python_out={dest}",
        *(str(PROTO_DIR / p) for p in PROTOS),
    ]
    if protoc.main(args) != 0:
        raise SystemExit("protoc failed")


def _relative_imports(text: str) -> str:
    stems = "|".join(Path(p).stem for p in PROTOS)
    return re.sub(
        rf"^import ({stems})_pb2 as (\w+)$",
        r"from . import \1_pb2 as \2",
        text,
        flags=re.MULTILINE,
    )


def _private_pool(text: str, module: str) -> str:
    default_pool = "_descriptor_pool.Default().AddSerializedFile("
    if default_pool not in text:
        raise SystemExit(f"{module}: protoc output no longer registers via the default pool")
    text = text.replace(default_pool, "_POOL.AddSerializedFile(")
    text = text.replace(
        "# @@protoc_insertion_point(imports)",
        "from ._pool import POOL as _POOL\n# @@protoc_insertion_point(imports)",
        1,
    )
    # Classes then report their real module, which keeps pickling working.
    return text.replace(
        f"BuildTopDescriptorsAndMessages(DESCRIPTOR, '{module}', ",
        "BuildTopDescriptorsAndMessages(DESCRIPTOR, __name__, ",
    )


def _drop_protobuf_guard(text: str, module: str) -> str:
    # The guard demands a runtime at least as new as protoc itself and its module
    # only exists from protobuf 5.27; pyproject.toml carries the real floor.
    guard = re.compile(
        r"^from google\.protobuf import runtime_version as _runtime_version\n"
        r"|^_runtime_version\.ValidateProtobufRuntimeVersion\(\n(?:.*\n)*?\)\n",
        flags=re.MULTILINE,
    )
    text, count = guard.subn("", text)
    if count != 2:
        raise SystemExit(f"{module}: protobuf runtime guard not found")
    return text


def _relax_grpc_guard(text: str, module: str) -> str:
    text, count = re.subn(
        r"^GRPC_GENERATED_VERSION = '[^']+'$",
        f"GRPC_GENERATED_VERSION = '{MIN_GRPCIO}'",
        text,
        flags=re.MULTILINE,
    )
    if count != 1:
        raise SystemExit(f"{module}: grpcio version guard not found")
    return text


def _transform(name: str, text: str) -> str:
    module = name.split(".")[0]
    text = _relative_imports(text)
    if name.endswith("_pb2.py"):
        text = _private_pool(text, module)
        text = _drop_protobuf_guard(text, module)
    elif name.endswith("_pb2_grpc.py"):
        text = _relax_grpc_guard(text, module)
    return _header(name) + text


def _wanted(name: str) -> bool:
    if name.endswith("_pb2_grpc.py"):
        return name.removesuffix("_pb2_grpc.py") in SERVICE_MODULES
    return name.endswith(("_pb2.py", "_pb2.pyi"))


def render() -> dict[str, str]:
    """Return the full contents of the generated package, keyed by file name."""
    files = {"__init__.py": INIT_MODULE, "_pool.py": POOL_MODULE}
    with tempfile.TemporaryDirectory() as tmp:
        raw = Path(tmp)
        _run_protoc(raw)
        for path in sorted(raw.iterdir()):
            if _wanted(path.name):
                files[path.name] = _transform(path.name, path.read_text())
    return files


def _write(files: dict[str, str]) -> None:
    OUT_DIR.mkdir(parents=True, exist_ok=True)
    for stale in OUT_DIR.glob("*.py*"):
        if stale.is_file() and stale.name not in files:
            stale.unlink()
    for name, text in files.items():
        (OUT_DIR / name).write_text(text)


def check(report: Callable[[str], None] = print) -> bool:
    """True when the committed package equals a fresh build; differences go to report."""
    fresh = render()
    committed = (
        {p.name: p.read_text() for p in OUT_DIR.glob("*.py*") if p.is_file()}
        if OUT_DIR.is_dir()
        else {}
    )
    clean = True
    for name in sorted(fresh.keys() | committed.keys()):
        old, new = committed.get(name), fresh.get(name)
        if old == new:
            continue
        clean = False
        if old is None or new is None:
            report(f"{name}: {'missing' if old is None else 'not produced by the generator'}")
            continue
        diff = difflib.unified_diff(
            old.splitlines(),
            new.splitlines(),
            f"committed/{name}",
            f"fresh/{name}",
            lineterm="",
            n=1,
        )
        # Serialized descriptors sit on one very long line; keep reports readable.
        report("\n".join(line[:160] for line in list(diff)[:40]))
    if not clean:
        report(
            f"generated code is stale (regenerated with grpcio-tools {_tools_version()}); "
            "run: python scripts/gen_protos.py"
        )
    return clean


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--check", action="store_true", help="compare with a fresh build instead of writing"
    )
    args = parser.parse_args(argv)
    if args.check:
        return 0 if check() else 1
    _write(render())
    return 0


if __name__ == "__main__":
    sys.exit(main())
