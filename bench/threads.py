"""Where the server's processor time goes, thread by thread, under a scenario's load.

    .venv/bin/python bench/threads.py [--model identity_py] [--protocol http-json] [--concurrency 32]
    .venv/bin/python bench/threads.py --model heavy --protocol grpc --concurrency 64 --rounds 3
    .venv/bin/python bench/threads.py --root /tmp/base --rounds 3   # alternated with another tree

The server starts with the one model, the scenario's load generator (wrk or h2load) warms it
up, and each thread's counters are read from ``/proc/<pid>/task/<tid>/stat`` and
``schedstat`` before and after the measured load. For each thread that did work it prints
its user and system processor time per request, the share of the wall time it ran and the
share it waited runnable for a CPU (the kernel's run delay: a thread that shares a busy CPU
waits), its switches per second and the CPUs it may run on at the end. That is how the
event loop's thread and a Python model's thread were found paying for running on different
CPUs, and how the CPU placement's contention limit was chosen (docs/performance.md, change
22). With ``--root`` each round runs that tree's server and then this one's, in alternating
order, so the two are compared in the same minutes. Flags for the server go in
``BENCH_SERVER_ARGS``. Linux only.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench import measure, models, payloads, targets  # noqa: E402
from bench.scenarios import Scenario  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent
TICKS = os.sysconf("SC_CLK_TCK")


@dataclass(frozen=True)
class ThreadTimes:
    name: str
    user_ticks: int
    system_ticks: int
    run_ns: int
    wait_ns: int
    switches: int
    cpus: str


def read_threads(pid: int) -> dict[int, ThreadTimes]:
    """Every live thread of ``pid``: its name, processor time, run delay and CPU list."""
    found: dict[int, ThreadTimes] = {}
    for entry in os.listdir(f"/proc/{pid}/task"):
        base = f"/proc/{pid}/task/{entry}"
        try:
            with open(f"{base}/stat") as stat:
                text = stat.read()
            with open(f"{base}/schedstat") as schedstat:
                run_ns, wait_ns, switches = (int(x) for x in schedstat.read().split()[:3])
            with open(f"{base}/status") as status:
                cpus = next(x for x in status if x.startswith("Cpus_allowed_list:"))
        except (OSError, StopIteration):
            continue  # the thread ended meanwhile
        # The name may hold spaces and parentheses: fields are counted after its end.
        fields = text[text.rindex(")") + 2 :].split()
        found[int(entry)] = ThreadTimes(
            name=text[text.index("(") + 1 : text.rindex(")")],
            user_ticks=int(fields[11]),
            system_ticks=int(fields[12]),
            run_ns=run_ns,
            wait_ns=wait_ns,
            switches=switches,
            cpus=cpus.split(":", 1)[1].strip(),
        )
    return found


@dataclass(frozen=True)
class ThreadShare:
    tid: int
    name: str
    user_us_per_req: float
    system_us_per_req: float
    run_share: float  # of the wall time
    wait_share: float  # of the wall time, runnable but waiting for a CPU
    switches_per_s: float
    cpus: str


def split(
    before: dict[int, ThreadTimes], after: dict[int, ThreadTimes], requests: int, wall_s: float
) -> list[ThreadShare]:
    """Each thread that ran during the measurement, ordered by its id."""
    shares: list[ThreadShare] = []
    for tid in sorted(after):
        end = after[tid]
        start = before.get(tid, ThreadTimes(end.name, 0, 0, 0, 0, 0, end.cpus))
        user_us = (end.user_ticks - start.user_ticks) / TICKS * 1e6
        system_us = (end.system_ticks - start.system_ticks) / TICKS * 1e6
        run_share = (end.run_ns - start.run_ns) / 1e9 / wall_s
        if run_share < 0.005 and user_us + system_us == 0:
            continue  # idle during the measurement
        shares.append(
            ThreadShare(
                tid=tid,
                name=end.name,
                user_us_per_req=user_us / max(requests, 1),
                system_us_per_req=system_us / max(requests, 1),
                run_share=run_share,
                wait_share=(end.wait_ns - start.wait_ns) / 1e9 / wall_s,
                switches_per_s=(end.switches - start.switches) / wall_s,
                cpus=end.cpus,
            )
        )
    return shares


def measure_once(
    root: Path, scenario: Scenario, cache: Path, seconds: float, warmup: float
) -> None:
    os.environ["BENCH_OURS_ROOT"] = str(root)
    with tempfile.TemporaryDirectory(prefix="bench-threads-") as tmp:
        workdir = Path(tmp)
        target = targets.Ours(workdir, cache, only=(scenario.spec,))
        try:
            target.start()
            load = measure.load_runner(target, scenario.model, scenario, workdir)
            load(warmup)
            before = read_threads(target.pid)
            started = time.monotonic()
            result = load(seconds)
            wall = time.monotonic() - started
            after = read_threads(target.pid)
        finally:
            target.stop()
    shares = split(before, after, int(result["requests"]), wall)
    print(
        f"{root}: {result['rps']:,.0f} req/s, p50 {result['p50_us'] / 1000:.2f} ms, "
        f"p99 {result['p99_us'] / 1000:.2f} ms, errors {result['errors']}"
    )
    print("  tid      name             user us/req  sys us/req   ran  waited  switches/s  cpus")
    for t in shares:
        print(
            f"  {t.tid:<8} {t.name:<16} {t.user_us_per_req:11.1f} {t.system_us_per_req:11.1f} "
            f"{t.run_share:5.2f} {t.wait_share:7.2f} {t.switches_per_s:11.0f}  {t.cpus}"
        )
    total = sum(t.user_us_per_req + t.system_us_per_req for t in shares)
    print(f"  all threads: {total:.1f} CPU-us per request")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--model", default="identity_py", choices=sorted(models.BY_NAME))
    parser.add_argument("--protocol", default="http-json", choices=payloads.PROTOCOLS)
    parser.add_argument("--concurrency", type=int, default=32)
    parser.add_argument("--seconds", type=float, default=6.0, help="the measured load")
    parser.add_argument("--warmup", type=float, default=2.0, help="load before it")
    parser.add_argument("--rounds", type=int, default=1)
    parser.add_argument("--root", type=Path, help="another source tree, alternated with this one")
    parser.add_argument(
        "--cache", type=Path, default=Path("/tmp/bench-models") / models.fingerprint()
    )
    args = parser.parse_args(argv)
    if not Path("/proc/thread-self/schedstat").exists():
        parser.error("needs Linux's /proc/<pid>/task/<tid>/schedstat")
    scenario = Scenario(args.model, args.model, args.protocol, args.concurrency, ("ours",))
    for round_ in range(args.rounds):
        roots = [ROOT] if args.root is None else [args.root, ROOT]
        if round_ % 2:
            roots.reverse()
        for root in roots:
            measure_once(root, scenario, args.cache, args.seconds, args.warmup)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
