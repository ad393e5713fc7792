"""Mutated bodies for the logging, trace and system shared-memory routes, the same to this
server and to tritonserver, must get the same answers: a fixed, seeded set over HTTP.

Two answers are compared loosely, for reasons of design: this server records no traces, so
where tritonserver would turn tracing on (and refuses it here for want of a trace file) it
answers 501; and a registration the operating system refuses carries the system's own words
after "failed to register shared memory region '<name>': " in tritonserver's message.
"""

from __future__ import annotations

import copy
import json
import os
import random
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.differential.conftest import start_triton
from tests.differential.http_wire import Answer, send
from tests.differential.test_mutations_vs_triton import _containers
from tests.harness import run_server
from tests.models import write_python_identity

pytestmark = pytest.mark.triton

CASES = 300
_KEY = f"/control_mutations_{os.getpid()}"
_BASES: list[tuple[str, dict[str, Any]]] = [
    (
        "/v2/logging",
        {
            "log_verbose_level": 0,
            "log_info": True,
            "log_warning": True,
            "log_error": True,
            "log_format": "default",
        },
    ),
    (
        "/v2/trace/setting",
        {"trace_level": ["OFF"], "trace_rate": "1000", "trace_count": "-1", "log_frequency": "0"},
    ),
    ("/v2/models/pm/trace/setting", {"trace_level": ["OFF"], "trace_rate": "10"}),
    ("/v2/systemsharedmemory/region/r1/register", {"key": _KEY, "offset": 0, "byte_size": 64}),
]
_VALUES: list[Any] = [
    None, True, False, 0, -1, 1, 2**31, 2**63, 1.5, "", "x", "1", "-1", "OFF", "TIMESTAMPS",
    "TENSORS", "ISO8601", "default", [], ["OFF"], ["x"], [1], {}, {"a": 1}, _KEY, 64, 4096, 5000,
]  # fmt: skip
_KEYS = [
    "log_file", "log_info", "log_warning", "log_error", "log_verbose_level", "log_format",
    "trace_level", "trace_rate", "trace_count", "log_frequency", "trace_file", "trace_mode",
    "key", "offset", "byte_size",
]  # fmt: skip
_NO_TRACE_FILE = "Attempting to set invalid trace setting :trace file name is not given"
_NO_TRACING = "tracing is not supported by this server; 'trace_level' can only be OFF"
_REGISTER_FAILED = "failed to register shared memory region 'r1': "


def _mutate(rng: random.Random, document: dict[str, Any]) -> Any:
    document = copy.deepcopy(document)
    for _ in range(rng.randint(1, 2)):
        op = rng.random()
        if op < 0.08:
            return copy.deepcopy(rng.choice([[], "x", 1, None, [document]]))
        target = rng.choice(_containers(document, []))
        value = copy.deepcopy(rng.choice(_VALUES))
        if isinstance(target, dict):
            if target and op < 0.5:
                target[rng.choice(list(target))] = value
            elif target and op < 0.65:
                del target[rng.choice(list(target))]
            else:
                target[rng.choice(_KEYS)] = value
        elif target:
            target[rng.randrange(len(target))] = value
        else:
            target.append(value)
    return document


def _cases() -> Iterator[tuple[int, str, bytes]]:
    rng = random.Random(20261128)
    for index in range(CASES):
        path, base = rng.choice(_BASES)
        raw = json.dumps(_mutate(rng, base)).encode()
        if rng.random() < 0.05:
            raw = raw[: rng.randrange(len(raw) + 1)]
        yield index, path, raw


def _outcome(answer: Answer) -> tuple[int, Any]:
    document = answer.document
    error = document.get("error") if isinstance(document, dict) else None
    return answer.status, document if error is None else error


def _agree(ours: tuple[int, Any], theirs: tuple[int, Any]) -> bool:
    if ours == theirs:
        return True
    if theirs == (400, _NO_TRACE_FILE):
        return ours == (501, _NO_TRACING)
    return (
        ours[0] == theirs[0] == 400
        and all(isinstance(side[1], str) for side in (ours, theirs))
        and ours[1].startswith(_REGISTER_FAILED)
        and theirs[1].startswith(_REGISTER_FAILED)
    )


@pytest.fixture(scope="module")
def servers(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, Any]]:
    repo: Path = tmp_path_factory.mktemp("control_mutations")
    write_python_identity(repo, "pm")
    region = Path("/dev/shm") / _KEY.lstrip("/")
    region.write_bytes(b"\0" * 4096)
    args = ["--model-repository", str(repo), "--allow-client-shm=true"]
    try:
        with run_server(args, services=("http",)) as ours, start_triton(repo) as theirs:
            yield {"ours": ours, "triton": theirs}
    finally:
        region.unlink(missing_ok=True)


def test_mutated_control_bodies_get_the_same_answers(servers: dict[str, Any]) -> None:
    differing = []
    for index, path, raw in _cases():
        answers = {
            side: _outcome(send(srv.http_url, "POST", path, raw)) for side, srv in servers.items()
        }
        if not _agree(answers["ours"], answers["triton"]):
            differing.append((index, path, raw, answers["ours"], answers["triton"]))
        for srv in servers.values():  # every case starts with no region registered
            send(srv.http_url, "POST", "/v2/systemsharedmemory/region/r1/unregister")
    assert differing == [], "\n".join(map(repr, differing))
