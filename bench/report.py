"""Medians over repeats, the issue's targets as ratios, and the markdown table and plot."""

from __future__ import annotations

import json
import statistics
import subprocess
from collections import defaultdict
from pathlib import Path
from typing import Any

from bench.targets import MLSERVER_VENV

METRICS = (
    "rps",
    "p50_us",
    "p90_us",
    "p99_us",
    "errors",
    "server_cpu_us_per_req",
    "client_cpu_us_per_req",
    "server_rss_mb",
)


def one_line(row: dict[str, Any]) -> str:
    if "failure" in row:
        return f"{row['target']:8} {row['scenario']:32} FAILED {row['failure']}"
    return (
        f"{row['target']:8} {row['scenario']:32} {row['rps']:9.0f} req/s  p50 {row['p50_us'] / 1000:7.2f} ms  "
        f"p99 {row['p99_us'] / 1000:7.2f} ms  err {row['errors']:4d}  server {row['server_cpu_us_per_req']:6.0f} CPU-us/req  "
        f"client {row['client_cpu_us_per_req']:5.0f}"
    )


def repeat_key(record: dict[str, Any]) -> str:
    """Which run and repeat a row or an ONNX Runtime limit was measured in."""
    return f"{record.get('run', '')}#{record['repeat']}"


def summarize(
    rows: list[dict[str, Any]], limits: list[dict[str, Any]], info: dict[str, Any]
) -> dict[str, Any]:
    """Medians per server and scenario, and the targets. ``limits`` are the raw limit
    records (``{"run", "repeat", "ort_limit"}``), one per repeat."""
    grouped: dict[tuple[str, str], list[dict[str, Any]]] = defaultdict(list)
    for row in rows:
        grouped[(row["target"], row["scenario"])].append(row)
    table = []
    for runs in grouped.values():
        good = [r for r in runs if "failure" not in r]
        first = runs[0]
        entry: dict[str, Any] = {
            k: first[k]
            for k in (
                "target",
                "scenario",
                "group",
                "model",
                "served_model",
                "protocol",
                "concurrency",
            )
        }
        entry["runs"] = len(good)
        if good:
            for metric in METRICS:
                entry[metric] = statistics.median(r[metric] for r in good)
            entry["rps_runs"] = [round(r["rps"]) for r in good]
            entry["per_repeat"] = {repeat_key(r): {m: r[m] for m in METRICS} for r in good}
        failures = [r["failure"] for r in runs if "failure" in r]
        if failures:
            entry["failures"] = failures
        table.append(entry)
    limit: dict[str, Any] = {}
    runs = [record["ort_limit"] for record in limits]
    for model in {m for run in runs for m in run}:
        per_batch = defaultdict(list)
        for run in runs:
            for batch, value in run[model]["items_per_s"].items():
                per_batch[int(batch)].append(value)
        medians = {b: statistics.median(v) for b, v in sorted(per_batch.items())}
        best = max(medians, key=lambda b: medians[b])
        limit[model] = {"items_per_s": medians, "best_batch": best, "best": medians[best]}
        limit[model]["best_per_repeat"] = {
            repeat_key(record): record["ort_limit"][model]["best"]
            for record in limits
            if model in record["ort_limit"]
        }
    return {"info": info, "table": table, "ort_limit": limit, "targets": evaluate(table, limit)}


def _find(
    table: list[dict[str, Any]], target: str, model: str, protocol: str, concurrency: int
) -> dict[str, Any] | None:
    for entry in table:
        if (entry["target"], entry["model"], entry["protocol"], entry["concurrency"]) == (
            target,
            model,
            protocol,
            concurrency,
        ):
            return entry if entry.get("runs") else None
    return None


def evaluate(table: list[dict[str, Any]], limit: dict[str, Any]) -> list[dict[str, Any]]:
    """Each target of the issue as a measured ratio against its threshold."""
    checks: list[dict[str, Any]] = []

    def check(
        name: str, measured: tuple[float | None, list[float]], threshold: float, higher: bool
    ) -> None:
        value, repeats = measured
        met = None if value is None else (value >= threshold if higher else value <= threshold)
        checks.append(
            {
                "target": name,
                "value": value,
                "repeats": repeats,
                "threshold": threshold,
                "higher_is_better": higher,
                "met": met,
            }
        )

    def ratio(
        a: dict[str, Any] | None, b: dict[str, Any] | None, metric: str
    ) -> tuple[float | None, list[float]]:
        if a is None or b is None or not b.get(metric):
            return None, []
        return paired_ratio(
            _by_repeat(a, metric), _by_repeat(b, metric), float(a[metric]) / float(b[metric])
        )

    for protocol in ("http-json", "grpc"):
        ours, ml = (
            _find(table, "ours", "identity", protocol, 32),
            _find(table, "mlserver", "identity", protocol, 32),
        )
        check(f"identity c=32 {protocol}: req/s vs MLServer", ratio(ours, ml, "rps"), 3.0, True)
        check(
            f"identity c=32 {protocol}: CPU-us/req vs MLServer",
            ratio(ours, ml, "server_cpu_us_per_req"),
            1 / 3,
            False,
        )
    for protocol in ("http-json", "grpc"):
        ours, ml = (
            _find(table, "ours", "identity", protocol, 1),
            _find(table, "mlserver", "identity", protocol, 1),
        )
        check(f"identity c=1 {protocol}: p50 vs MLServer", ratio(ours, ml, "p50_us"), 0.5, False)
    for protocol in ("http-json", "http-binary", "grpc"):
        ours, tr = (
            _find(table, "ours", "identity_py", protocol, 32),
            _find(table, "triton", "identity_py", protocol, 32),
        )
        check(
            f"python identity c=32 {protocol}: req/s vs Triton", ratio(ours, tr, "rps"), 1.0, True
        )
        check(
            f"python identity c=32 {protocol}: CPU-us/req vs Triton",
            ratio(ours, tr, "server_cpu_us_per_req"),
            1.0,
            False,
        )
    for protocol in ("http-json", "grpc"):
        on, off = (
            _find(table, "ours", "mlp", protocol, 64),
            _find(table, "ours", "mlp_nobatch", protocol, 64),
        )
        check(f"mlp c=64 {protocol}: batching on vs off", ratio(on, off, "rps"), 2.5, True)
    heavy_limit = limit.get("heavy", {})
    best = heavy_limit.get("best")
    for protocol, threshold in (("grpc", 0.75), ("http-json", 0.5)):
        heavy = _find(table, "ours", "heavy", protocol, 64)
        measured: tuple[float | None, list[float]] = (None, [])
        if heavy and best:
            measured = paired_ratio(
                _by_repeat(heavy, "rps"),
                heavy_limit.get("best_per_repeat", {}),
                heavy["rps"] / best,
            )
        check(f"heavy c=64 {protocol}: vs in-process ORT best", measured, threshold, True)
    return checks


def _by_repeat(entry: dict[str, Any], metric: str) -> dict[str, float]:
    """A table entry's ``metric`` in each repeat it was measured in."""
    return {key: values[metric] for key, values in entry.get("per_repeat", {}).items()}


def paired_ratio(
    a: dict[str, float], b: dict[str, float], of_medians: float
) -> tuple[float, list[float]]:
    """The median of a/b over the repeats both were measured in, and those ratios in the
    repeats' order: the two sides of a pair run minutes apart at most (bench/run.py), so a
    drift of the machine between repeats touches both alike. Sides with no repeat in common
    (rows merged from separate runs) give the ratio of their medians, ``of_medians``."""
    ratios = [a[key] / b[key] for key in sorted(a.keys() & b.keys(), key=_repeat_order) if b[key]]
    if not ratios:
        return of_medians, []
    return statistics.median(ratios), ratios


def _repeat_order(key: str) -> tuple[str, int]:
    run, _, repeat = key.rpartition("#")
    return run, int(repeat)


def _fmt(value: Any, digits: int = 0) -> str:
    if value is None:
        return "-"
    return f"{value:,.{digits}f}"


def markdown(summary: dict[str, Any]) -> str:
    info = summary["info"]
    m = info["machine"]
    s = info["settings"]
    lines = [
        "# Benchmark results",
        "",
        f"Machine: {m['cpu']}, {m['cores']} cores, Linux {m['kernel']}, Python {m['python']}; commit {m['commit']}.",
        f"Command: `{info['command']}`; medians of {s['repeats']} runs of {s['duration_s']:g} s after {s['warmup_s']:g} s of warm-up.",
        f"Load average (1 min) at start {info['load_start'][0]:.2f}, at end {info['load_end'][0]:.2f}"
        " (for a merged report: the lowest and highest seen at any run's start).",
        "",
        "CPU-us/req is the server's whole process tree (user + system) divided by completed requests;",
        "client is the load generator's own CPU per request.",
        "",
        "| scenario | server | req/s | p50 ms | p90 ms | p99 ms | errors | server CPU-us/req | client CPU-us/req | RSS MB |",
        "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    order = {"ours": 0, "mlserver": 1, "triton": 2}
    for e in sorted(
        summary["table"],
        key=lambda e: (
            e["group"],
            e["model"],
            e["concurrency"],
            e["protocol"],
            order.get(e["target"], 9),
        ),
    ):
        if not e.get("runs"):
            lines.append(
                f"| {e['scenario']} | {e['target']} | failed: {e.get('failures', ['?'])[0][:80]} |||||||"
            )
            continue
        served = "" if e["served_model"] == e["model"] else f" ({e['served_model']})"
        lines.append(
            f"| {e['scenario']} | {e['target']}{served} | {_fmt(e['rps'])} | {_fmt(e['p50_us'] / 1000, 2)} | {_fmt(e['p90_us'] / 1000, 2)} | "
            f"{_fmt(e['p99_us'] / 1000, 2)} | {e['errors']:.0f} | {_fmt(e['server_cpu_us_per_req'])} | {_fmt(e['client_cpu_us_per_req'])} | {_fmt(e['server_rss_mb'])} |"
        )
    if summary["ort_limit"]:
        lines += [
            "",
            "In-process ONNX Runtime (items/s by batch size):",
            "",
            "| model | " + " | ".join(f"b={b}" for b in (1, 2, 4, 8, 16, 32, 64)) + " | best |",
            "|---|" + "---:|" * 8,
        ]
        for model, row in sorted(summary["ort_limit"].items()):
            cells = [_fmt(row["items_per_s"].get(b)) for b in (1, 2, 4, 8, 16, 32, 64)]
            lines.append(
                f"| {model} | "
                + " | ".join(cells)
                + f" | {_fmt(row['best'])} (b={row['best_batch']}) |"
            )
    measured = [c for c in summary["targets"] if c["value"] is not None]
    if not measured:
        lines += ["", "Targets: none of them is measured by this selection of scenarios."]
        return "\n".join(lines) + "\n"
    lines += [
        "",
        "Targets (the median of the ratios of each repeat's pair, measured minutes apart at most;"
        " each repeat's ratio beside it):",
        "",
        "| target | measured | repeats | threshold | met |",
        "|---|---:|---|---:|---|",
    ]
    for c in measured:
        sign = ">=" if c["higher_is_better"] else "<="
        met = "n/a" if c["met"] is None else ("yes" if c["met"] else "no")
        repeats = ", ".join(_fmt(r, 2) for r in c.get("repeats", ())) or "-"
        lines.append(
            f"| {c['target']} | {_fmt(c['value'], 2)} | {repeats} | {sign} {c['threshold']:.2f} | {met} |"
        )
    return "\n".join(lines) + "\n"


def write(summary: dict[str, Any], out: Path) -> None:
    out.mkdir(parents=True, exist_ok=True)
    (out / "latest.json").write_text(json.dumps(summary, indent=1, default=str))
    (out / "results.md").write_text(markdown(summary))
    python = MLSERVER_VENV / "bin" / "python"
    plot = Path(__file__).resolve().parent / "plot.py"
    if python.exists():
        done = subprocess.run(
            [str(python), str(plot), str(out / "latest.json"), str(out / "throughput.png")],
            capture_output=True,
            text=True,
        )
        if done.returncode != 0:
            print(f"plot failed: {done.stderr[-2000:]}")
