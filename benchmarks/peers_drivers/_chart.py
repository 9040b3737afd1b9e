"""Draw benchmarks/results/latest.png from latest.json (run in the benchmark's matplotlib venv).

    python _chart.py latest.json latest.png

One panel per measure: a bar per system (median, whiskers min–max), pgsched first and in
its own colour, each panel saying whether higher or lower is better.
"""

from __future__ import annotations

import json
import sys

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
from matplotlib.ticker import FuncFormatter

PANELS = (  # field, title, unit, higher is better, digits
    ("enqueue_bulk_per_s", "Bulk enqueue", "runs/s", True, 0),
    ("enqueue_single_per_s", "Single enqueue", "runs/s", True, 0),
    ("drain_per_s", "Drain, 1 worker process", "runs/s", True, 0),
    ("drain_2p_per_s", "Drain, 2 worker processes", "runs/s", True, 0),
    ("latency_p50_ms", "Enqueue→start latency p50", "ms", False, 2),
    ("latency_p99_ms", "Enqueue→start latency p99", "ms", False, 2),
    ("cpu_ms_per_run", "CPU per run, 1 worker process", "ms", False, 3),
    ("cpu_ms_per_run_2p", "CPU per run, 2 worker processes", "ms", False, 3),
)
COLORS = {
    "pgsched": "#1f5fbf",
    "pgqueuer": "#8c8c8c",
    "procrastinate": "#b0a17a",
    "celery": "#7fa37f",
    "raw": "#d9d9d9",
}


def label(value: float, digits: int) -> str:
    if digits == 0 and value >= 10_000:
        return f"{value / 1000:,.0f}k"
    if digits == 0 and value >= 1_000:
        return f"{value / 1000:,.1f}k"
    return f"{value:,.{digits}f}"


def main(json_path: str, png_path: str) -> None:
    results = json.loads(open(json_path).read())
    systems = results["systems"]
    names = sorted(systems, key=lambda n: (n != "pgsched", n == "raw", list(systems).index(n)))
    fig, axes = plt.subplots(2, 4, figsize=(17, 8.2))
    for ax, (field, title, unit, higher, digits) in zip(axes.flat, PANELS):
        shown = [n for n in names if field in systems[n]]
        values = [systems[n][field] for n in shown]
        lows = [v - systems[n]["min_max"][field][0] for n, v in zip(shown, values)]
        highs = [systems[n]["min_max"][field][1] - v for n, v in zip(shown, values)]
        bars = ax.bar(
            shown,
            values,
            color=[COLORS.get(n, "#999999") for n in shown],
            edgecolor=["#333333" if n == "raw" else "none" for n in shown],
            hatch=None,
            linewidth=0.6,
            yerr=[lows, highs] if results["repetitions"] > 1 else None,
            capsize=3,
            ecolor="#444444",
        )
        for bar, n in zip(bars, shown):
            if n == "raw":
                bar.set_hatch("//")
        top = max(max(v + h for v, h in zip(values, highs)) if values else 1, 1e-9)
        for bar, value, high in zip(bars, values, highs):  # above the whisker, not on it
            ax.text(
                bar.get_x() + bar.get_width() / 2,
                value + high + top * 0.02,
                label(value, digits),
                ha="center",
                va="bottom",
                fontsize=9,
            )
        ax.set_ylim(0, top * 1.18)
        ax.set_title(f"{title}\n{unit}, {'higher' if higher else 'lower'} is better", fontsize=10.5)
        ax.tick_params(axis="x", labelsize=9, rotation=20)
        ax.tick_params(axis="y", labelsize=8)
        if digits == 0:
            ax.yaxis.set_major_formatter(FuncFormatter(lambda v, _: f"{v / 1000:g}k" if v >= 1000 else f"{v:g}"))
        ax.spines[["top", "right"]].set_visible(False)
        ax.grid(axis="y", alpha=0.25)
        ax.set_axisbelow(True)
    versions = ", ".join(f"{n} {systems[n]['version'].split(' ')[0]}" for n in names if n != "raw")
    reps = results["repetitions"]
    raw = "; raw = psycopg + SQL, no framework (hatched)" if "raw" in systems else ""
    fig.suptitle(
        f"pgsched vs peers, no-op tasks — {results['runs']:,} runs, "
        f"{'median of ' + str(reps) + ' repetitions (whiskers min–max)' if reps > 1 else 'one repetition'}\n"
        f"{results['machine']}; {versions}{raw}",
        fontsize=11,
    )
    fig.tight_layout(rect=(0, 0, 1, 0.93))
    fig.savefig(png_path, dpi=110)


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2])
