"""The large-tensor benchmark's pure parts: its options, its accounting and its report."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from bench import large_tensors, models


def _row(server: str, repeat: int, rps: float, cpu: float, errors: int = 0) -> dict[str, Any]:
    return {
        "server": server,
        "protocol": "grpc",
        "size": 150528,
        "concurrency": 8,
        "repeat": repeat,
        "requests": int(rps * 4),
        "errors": errors,
        "seconds": 4.0,
        "rps": rps,
        "p50_ms": 1000 / rps,
        "server_cpu_us_per_req": cpu,
        "faults_per_req": 2.0,
        "server_rss_mb": 300.0,
    }


ROWS = [
    _row("triton", 0, 400.0, 2000.0),
    _row("ours", 0, 500.0, 1000.0),
    _row("ours", 1, 100.0, 3000.0, errors=2),
    _row("ours", 2, 300.0, 1500.0),
    _row("triton", 1, 200.0, 4000.0),
    _row("triton", 2, 300.0, 3000.0),
]


def test_defaults() -> None:
    args = large_tensors.parse_args([])
    assert args.sizes == [150528, 1048576]
    assert (args.seconds, args.warmup, args.repeats) == (4.0, 1.0, 3)
    assert args.out == large_tensors.RESULTS


def test_options_override_the_defaults(tmp_path: Path) -> None:
    args = large_tensors.parse_args(
        [
            "--seconds",
            "1",
            "--warmup",
            "0.5",
            "--repeats",
            "1",
            "--sizes",
            "150528",
            "--out",
            str(tmp_path),
        ]
    )
    assert args.sizes == [150528]
    assert (args.seconds, args.warmup, args.repeats, args.out) == (1.0, 0.5, 1, tmp_path)


@pytest.mark.parametrize(
    "argv",
    [["--sizes", "0"], ["--repeats", "0"], ["--seconds", "0"], ["--warmup", "-1"], ["--sizes"]],
)
def test_bad_options_are_refused(argv: list[str]) -> None:
    with pytest.raises(SystemExit):
        large_tensors.parse_args(argv)


def test_minor_faults_is_field_ten_even_with_spaces_in_the_name() -> None:
    stat = "4242 (tritonserver (x) y) S 1 4242 4242 0 -1 4194560 12345 0 7 0 10 3 0 0 20 0"
    assert large_tensors.minor_faults(stat) == 12345


@pytest.mark.parametrize(
    ("elements", "label"), [(150528, "150528 (588 KiB)"), (1048576, "1048576 (4 MiB)")]
)
def test_size_labels(elements: int, label: str) -> None:
    assert large_tensors.size_label(elements) == label


def test_summary_takes_medians_and_totals_errors() -> None:
    summary = large_tensors.summarize(ROWS)
    assert [e["server"] for e in summary] == ["ours", "triton"]
    ours = summary[0]
    assert ours["repeats"] == 3
    assert ours["rps"] == 300.0
    assert ours["server_cpu_us_per_req"] == 1500.0
    assert ours["errors"] == 2
    assert summary[1]["rps"] == 300.0
    assert summary[1]["server_cpu_us_per_req"] == 3000.0


def test_summary_orders_by_size_protocol_concurrency_then_server() -> None:
    rows = [
        {**_row("triton", 0, 1.0, 1.0), "size": 1048576},
        {**_row("ours", 0, 1.0, 1.0), "protocol": "http-binary", "concurrency": 1},
        _row("triton", 0, 1.0, 1.0),
        _row("ours", 0, 1.0, 1.0),
    ]
    keys = [
        (e["size"], e["protocol"], e["concurrency"], e["server"])
        for e in large_tensors.summarize(rows)
    ]
    assert keys == [
        (150528, "http-binary", 1, "ours"),
        (150528, "grpc", 8, "ours"),
        (150528, "grpc", 8, "triton"),
        (1048576, "grpc", 8, "triton"),
    ]


def test_markdown_table_and_ratios() -> None:
    info = {
        "machine": {
            "cpu": "AMD EPYC",
            "cores": 2,
            "kernel": "6.1",
            "python": "3.11.7",
            "commit": "abc1234",
        },
        "command": "bench/large_tensors.py --repeats 3",
        "settings": {
            "repeats": 3,
            "seconds": 4.0,
            "warmup_s": 1.0,
            "sizes": [150528],
            "protocols": ["http-binary", "grpc"],
            "concurrencies": [1, 8],
        },
        "skipped": {},
    }
    text = large_tensors.markdown(info, large_tensors.summarize(ROWS))
    assert "Machine: AMD EPYC, 2 cores, Linux 6.1, Python 3.11.7; commit abc1234." in text
    assert "Command: `bench/large_tensors.py --repeats 3`; medians of 3 repeats" in text
    assert (
        "| size | protocol | concurrency | server | req/s | p50 ms | server CPU-us/req "
        "| faults/req | RSS MB | errors |" in text
    )
    assert "| 150528 (588 KiB) | grpc | 8 | ours | 300 | 3.33 | 1,500 | 2.0 | 300 | 2 |" in text
    assert "| 150528 (588 KiB) | grpc | 8 | triton | 300 | 3.33 | 3,000 | 2.0 | 300 | 0 |" in text
    assert "- 150528 (588 KiB) grpc c=8: req/s 1.00, CPU-us/req 0.50" in text


def test_without_tritonserver_the_report_says_so_and_has_no_ratios() -> None:
    info = {
        "machine": {"cpu": "x", "cores": 2, "kernel": "k", "python": "p", "commit": "c"},
        "command": "bench/large_tensors.py",
        "settings": {
            "repeats": 1,
            "seconds": 1.0,
            "warmup_s": 0.5,
            "sizes": [150528],
            "protocols": ["grpc"],
            "concurrencies": [8],
        },
        "skipped": {"triton": "/nowhere/real-triton is missing"},
    }
    ours_only = [r for r in ROWS if r["server"] == "ours"]
    text = large_tensors.markdown(info, large_tensors.summarize(ours_only))
    assert "Not run: triton (/nowhere/real-triton is missing)." in text
    assert "Ours / tritonserver" not in text


def test_repository_holds_the_large_identity(tmp_path: Path) -> None:
    root = large_tensors.write_repository(tmp_path / "models")
    config = (root / "identity_large" / "config.pbtxt").read_text()
    assert 'backend: "python"' in config
    assert "max_batch_size: 8" in config
    assert "dims: [ -1 ]" in config
    assert "count: 1 kind: KIND_CPU" in config
    assert "dynamic_batching" not in config
    model_py = (root / "identity_large" / "1" / "model.py").read_text()
    assert model_py == models.PYTHON_IDENTITY
