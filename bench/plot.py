"""Draw bench/results/latest.json: requests/s and server CPU per request, per scenario and
server, and for a concurrency sweep (three levels or more of one model and protocol) p50
latency against requests/s, one curve per server, in sweep.png beside the first figure. Runs
with the benchmark venv's Python, which alone carries matplotlib:

    bench/.venv-mlserver/bin/python bench/plot.py bench/results/latest.json bench/results/throughput.png
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

COLORS = {"ours": "#1f77b4", "mlserver": "#ff7f0e", "triton": "#2ca02c"}


def main(source: str, target: str) -> int:
    summary = json.loads(Path(source).read_text())
    rows = [e for e in summary["table"] if e.get("runs")]
    scenarios = sorted(
        {e["scenario"] for e in rows}, key=lambda s: (s.split()[0], int(s.split("c=")[1]), s)
    )
    servers = [s for s in COLORS if any(e["target"] == s for e in rows)]
    width = 0.8 / max(len(servers), 1)
    fig, axes = plt.subplots(2, 1, figsize=(max(10, len(scenarios) * 0.6), 9), sharex=True)
    for i, server in enumerate(servers):
        xs, rps, cpu = [], [], []
        for j, scenario in enumerate(scenarios):
            entry = next(
                (e for e in rows if e["target"] == server and e["scenario"] == scenario), None
            )
            if entry:
                xs.append(j + (i - (len(servers) - 1) / 2) * width)
                rps.append(entry["rps"])
                cpu.append(entry["server_cpu_us_per_req"])
        axes[0].bar(xs, rps, width, label=server, color=COLORS[server])
        axes[1].bar(xs, cpu, width, label=server, color=COLORS[server])
    axes[0].set_ylabel("requests/s (median)")
    axes[0].set_yscale("log")
    axes[0].legend()
    axes[1].set_ylabel("server CPU-us per request")
    axes[1].set_yscale("log")
    axes[1].set_xticks(range(len(scenarios)))
    axes[1].set_xticklabels(scenarios, rotation=60, ha="right", fontsize=8)
    cpu_name = summary["info"]["machine"]["cpu"]
    fig.suptitle(
        f"Inference servers on {summary['info']['machine']['cores']} cores ({cpu_name})",
        fontsize=10,
    )
    fig.tight_layout()
    fig.savefig(target, dpi=110)
    plt.close(fig)
    sweep(rows, summary, Path(target).with_name("sweep.png"))
    return 0


def sweep(rows: list[dict], summary: dict, target: Path) -> None:
    curves: dict[tuple[str, str], dict[str, list[dict]]] = {}
    for entry in rows:
        panel = curves.setdefault((entry["model"], entry["protocol"]), {})
        panel.setdefault(entry["target"], []).append(entry)
    panels = sorted(
        key for key, by_server in curves.items() if max(map(len, by_server.values())) >= 3
    )
    if not panels:
        return
    columns = min(len(panels), 2)
    lines = (len(panels) + columns - 1) // columns
    fig, axes = plt.subplots(lines, columns, figsize=(6 * columns, 4.5 * lines), squeeze=False)
    for ax, (model, protocol) in zip(axes.flat, panels, strict=False):
        for server, entries in sorted(curves[(model, protocol)].items()):
            entries.sort(key=lambda e: e["concurrency"])
            xs = [e["rps"] for e in entries]
            ys = [e["p50_us"] / 1000 for e in entries]
            ax.plot(xs, ys, marker="o", label=server, color=COLORS.get(server))
            for e, x, y in zip(entries, xs, ys, strict=True):
                ax.annotate(
                    str(e["concurrency"]),
                    (x, y),
                    fontsize=7,
                    xytext=(3, 3),
                    textcoords="offset points",
                )
        ax.set_title(f"{model} {protocol} (labels: concurrency)", fontsize=9)
        ax.set_xlabel("requests/s (median)")
        ax.set_xscale("log")
        ax.set_ylabel("p50 latency, ms")
        ax.set_yscale("log")
        ax.legend(fontsize=8)
    for ax in list(axes.flat)[len(panels) :]:
        ax.set_visible(False)
    fig.suptitle(f"Concurrency sweep on {summary['info']['machine']['cores']} cores", fontsize=10)
    fig.tight_layout()
    fig.savefig(target, dpi=110)
    plt.close(fig)


if __name__ == "__main__":
    sys.exit(main(sys.argv[1], sys.argv[2]))
