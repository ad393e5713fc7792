"""Run the benchmark: every scenario against every server, repeated, then the table and plot.

    .venv/bin/python bench/run.py --all                 # everything, 3 repeats (about 30 min)
    .venv/bin/python bench/run.py --quick               # 1 repeat, short runs (a smoke test)
    .venv/bin/python bench/run.py --group identity --target ours --target mlserver
    .venv/bin/python bench/run.py --group mlp --protocol grpc --concurrency-range 8:64:8

Servers run one at a time, group by group: in each repeat, every server that runs a group's
scenarios (identity, identity_py, mlp, heavy) starts afresh, runs them and stops before the
next one starts, and ONNX Runtime's limit is measured right after the heavy model's group. The
two sides of each target's ratio are thus measured minutes apart at most, and a target is the
median of its per-repeat ratios: this machine's speed drifts by a quarter over minutes, which
a ratio of medians taken a repeat apart would carry. Results go to bench/results/ (raw runs
under raw/, git-ignored).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench import measure, models, report, scenarios  # noqa: E402
from bench.targets import TARGETS, Target, start_reported  # noqa: E402

BENCH = Path(__file__).resolve().parent
RESULTS = BENCH / "results"


def machine() -> dict[str, Any]:
    cpu = ""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    rev = subprocess.run(
        ["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True, cwd=BENCH.parent
    ).stdout.strip()
    return {
        "cpu": cpu,
        "cores": os.cpu_count(),
        "python": platform.python_version(),
        "kernel": platform.release(),
        "commit": rev,
    }


def ort_limit(cache: Path, seconds: float) -> dict[str, Any]:
    """In a subprocess, so nothing of it stays in this process's memory or threads."""
    command = [
        sys.executable,
        str(BENCH / "ort_limit.py"),
        "--cache",
        str(cache),
        "--seconds",
        str(seconds),
    ]
    for stem in ("identity", "mlp", "heavy"):
        command += ["--model", stem]
    done = subprocess.run(command, capture_output=True, text=True, check=True)
    return {row["model"]: row for row in map(json.loads, done.stdout.splitlines())}


def plan(
    chosen: list[scenarios.Scenario], targets: list[Target], repeat: int
) -> list[tuple[Target, list[scenarios.Scenario]]]:
    """One repeat's order: group by group (identity, identity_py, mlp, heavy), each server
    that has a scenario in the group runs the group's scenarios, one server after another,
    so that the two sides of every ratio run minutes apart at most, whatever the machine
    does over a repeat. The servers' order within a group rotates with the repeat, so that
    none is always first."""
    groups: dict[str, list[scenarios.Scenario]] = {}
    for scenario in chosen:
        groups.setdefault(scenario.group, []).append(scenario)
    steps: list[tuple[Target, list[scenarios.Scenario]]] = []
    for group in groups.values():
        serving = [t for t in targets if any(t.name in s.targets for s in group)]
        if not serving:
            continue
        turn = repeat % len(serving)
        steps += [(target, group) for target in serving[turn:] + serving[:turn]]
    return steps


def run_target(
    target: Target,
    chosen: list[scenarios.Scenario],
    args: argparse.Namespace,
    repeat: int,
    sink: Any,
    run: str = "",
) -> list[dict[str, Any]]:
    rows: list[dict[str, Any]] = []
    start_reported(target)
    try:
        for scenario in chosen:
            model = target.model_for(scenario.model, scenario.concurrency)
            if (
                target.name not in scenario.targets
                or model is None
                or scenario.protocol not in target.protocols
            ):
                continue
            row: dict[str, Any] = {
                "run": run,
                "repeat": repeat,
                "target": target.name,
                "scenario": scenario.key,
                "group": scenario.group,
                "model": scenario.model,
                "served_model": model,
                "protocol": scenario.protocol,
                "concurrency": scenario.concurrency,
                "load1": os.getloadavg()[0],
                "settings": {"duration_s": args.duration, "warmup_s": args.warmup},
            }
            try:
                good_bytes = measure.check_answer(target, model, scenario)
                row.update(
                    measure.run(
                        target,
                        model,
                        scenario,
                        args.workdir,
                        args.duration,
                        args.warmup,
                        good_bytes,
                    )
                )
            except Exception as exc:  # one broken scenario must not lose the others
                row["failure"] = f"{type(exc).__name__}: {exc}"[:500]
            rows.append(row)
            sink.write(json.dumps(row) + "\n")
            sink.flush()
            print("   ", report.one_line(row), flush=True)
    finally:
        target.stop()
    return rows


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "--all", action="store_true", help="every scenario and server (the default selection)"
    )
    parser.add_argument("--quick", action="store_true", help="1 repeat, 3 s runs, 1 s warm-up")
    parser.add_argument(
        "--group", action="append", choices=["identity", "identity_py", "mlp", "heavy"]
    )
    parser.add_argument("--protocol", action="append", choices=["http-json", "http-binary", "grpc"])
    parser.add_argument("--target", action="append", choices=sorted(TARGETS))
    parser.add_argument(
        "--concurrency-range",
        metavar="START:END:STEP",
        help="sweep the chosen scenarios over these concurrency levels, as perf_analyzer's "
        "option of that name does (end inclusive, each part 1 by default); the report goes to "
        "bench/results/sweep/ unless --out says otherwise",
    )
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--duration", type=float, default=10.0, help="measured seconds per run")
    parser.add_argument(
        "--warmup", type=float, default=3.0, help="seconds of load before measuring"
    )
    parser.add_argument("--no-ort-limit", action="store_true")
    parser.add_argument(
        "--workdir", type=Path, default=Path(os.environ.get("TMPDIR", "/tmp")) / "bench-work"
    )
    parser.add_argument(
        "--cache",
        type=Path,
        default=Path(os.environ.get("TMPDIR", "/tmp")) / "bench-models" / models.fingerprint(),
    )
    parser.add_argument("--out", type=Path)
    parser.add_argument("--from-raw", type=Path, nargs="+", help="report from raw runs, no load")
    args = parser.parse_args(argv)
    args.concurrencies = None
    if args.concurrency_range:
        try:
            args.concurrencies = scenarios.concurrency_range(args.concurrency_range)
        except ValueError as exc:
            parser.error(f"--concurrency-range: {exc}")
    if args.out is None:
        args.out = RESULTS / "sweep" if args.concurrencies else RESULTS
    if args.quick:
        args.repeats, args.duration, args.warmup = 1, 3.0, 1.0
    return args


def from_raw(paths: list[Path], out: Path, duration: float, warmup: float) -> int:
    """Report from raw run files without measuring. A later file's rows replace an earlier
    file's rows for the same server and scenario (e.g. a rerun of one protocol), so every
    ratio still compares rows of one run; ONNX Runtime limits are pooled."""
    rows: dict[tuple[str, str, int], dict[str, Any]] = {}
    limits: list[dict[str, Any]] = []
    for index, path in enumerate(paths):
        fresh: dict[tuple[str, str, int], dict[str, Any]] = {}
        for line in path.read_text().splitlines():
            record = json.loads(line)
            # Rows of runs that did not record their run are told apart by their file.
            record.setdefault("run", path.stem)
            if "ort_limit" in record:
                limits.append(record)
            else:
                fresh[(record["target"], record["scenario"], record["repeat"])] = record
        replaced = {(t, s) for t, s, _ in fresh}
        rows = {k: v for k, v in rows.items() if (k[0], k[1]) not in replaced} | fresh
        print(f"{path}: {len(fresh)} rows" + (" (replacing earlier ones)" if index else ""))
    info = {
        "machine": machine(),
        "started": paths[0].stem,
        "load_start": [min(r["load1"] for r in rows.values())] * 3,
        "load_end": [max(r["load1"] for r in rows.values())] * 3,
        "settings": {
            "repeats": max(r["repeat"] for r in rows.values()) + 1,
            # Rows of runs that did not record their settings take --duration and --warmup.
            "duration_s": max(
                r.get("settings", {}).get("duration_s", duration) for r in rows.values()
            ),
            "warmup_s": max(r.get("settings", {}).get("warmup_s", warmup) for r in rows.values()),
        },
        "command": "bench/run.py --from-raw " + " ".join(p.name for p in paths),
    }
    report.write(report.summarize(list(rows.values()), limits, info), out)
    return 0


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.from_raw:
        return from_raw(args.from_raw, args.out, args.duration, args.warmup)
    chosen = scenarios.select(
        set(args.group or ()), set(args.protocol or ()), set(args.target or ()), args.concurrencies
    )
    names = [n for n in TARGETS if any(n in s.targets for s in chosen)]
    targets: list[Target] = []
    for name in names:
        target = TARGETS[name](args.workdir, args.cache)
        reason = target.available()
        if reason:
            print(f"skipping {name}: {reason}", flush=True)
        else:
            targets.append(target)
    for stem in {s.spec.onnx_file for s in chosen} | {"identity", "mlp", "heavy"}:
        models.onnx_path(args.cache, stem)
    stamp = time.strftime("%Y%m%d-%H%M%S")
    (args.out / "raw").mkdir(parents=True, exist_ok=True)
    raw_path = args.out / "raw" / f"{stamp}.jsonl"
    info = {
        "machine": machine(),
        "started": stamp,
        "load_start": os.getloadavg(),
        "settings": {"repeats": args.repeats, "duration_s": args.duration, "warmup_s": args.warmup},
        "command": " ".join([Path(sys.argv[0]).as_posix(), *sys.argv[1:]]),
    }
    rows: list[dict[str, Any]] = []
    limits: list[dict[str, Any]] = []
    with open(raw_path, "w") as sink:
        for repeat in range(args.repeats):
            print(f"repeat {repeat + 1}/{args.repeats}", flush=True)
            for target, group in plan(chosen, targets, repeat):
                rows += run_target(target, group, args, repeat, sink, stamp)
            if not args.no_ort_limit:
                # Right after the heavy model's group, the last: its ratio's two sides.
                limit = ort_limit(args.cache, 1.0 if args.quick else 2.0)
                record = {"run": stamp, "repeat": repeat, "ort_limit": limit}
                limits.append(record)
                sink.write(json.dumps(record) + "\n")
                print("   ort limit:", {m: round(v["best"]) for m, v in limit.items()}, flush=True)
    info["load_end"] = os.getloadavg()
    summary = report.summarize(rows, limits, info)
    report.write(summary, args.out)
    print((args.out / "results.md").read_text())
    return 0


if __name__ == "__main__":
    sys.exit(main())
