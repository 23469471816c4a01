"""The quality table and plot from the rows of benchmarks/quality/run.py.

    python benchmarks/quality/table.py                       # every quality_<machine>.csv in benchmarks/results/
    python benchmarks/quality/table.py --readme README.md    # also replace the table between the README's markers

Per (task, variant, heads): seeds, the dev metrics as mean +- sample std over seeds, the teacher's score, the
student's retention of it (mean / teacher, %), parameters, CPU latency per batch of 32, optimiser steps and the
mean wall time of a row. Writes quality_<machine>.md and quality_<machine>.png beside the CSV.
"""
from __future__ import annotations

import argparse
import glob
import os
import re
import statistics
import sys
from collections import OrderedDict
from typing import Dict, List

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.dirname(HERE))
import resultfile  # noqa: E402

from mlkd_fast.data import get_task  # noqa: E402

# the metrics shown per task, the first is the one that chose the kept model
TASK_METRICS = {"mrpc": ("accuracy", "f1"), "sts-b": ("spearman", "pearson"), "cola": ("mcc",),
                "rte": ("accuracy",), "sst-2": ("accuracy",), "qnli": ("accuracy",), "qqp": ("accuracy", "f1"),
                "mnli": ("accuracy",)}
START, END = "<!-- quality-table:start -->", "<!-- quality-table:end -->"


def groups(rows: List[Dict[str, str]]) -> "OrderedDict[tuple, List[Dict[str, str]]]":
    out: "OrderedDict[tuple, List[Dict[str, str]]]" = OrderedDict()
    for r in rows:
        out.setdefault((r["task"], r["variant"], int(r["heads"]), r["epochs"]), []).append(r)
    return out


def mean_std(values: List[float]) -> str:
    if len(values) == 1:
        return f"{values[0]:.2f}"
    return f"{statistics.mean(values):.2f} ± {statistics.stdev(values):.2f}"


def summarise(rows: List[Dict[str, str]]) -> List[Dict[str, str]]:
    """One line per (task, variant, heads, budget)."""
    lines = []
    for (task, variant, heads, epochs), rs in groups(rows).items():
        metrics = TASK_METRICS.get(task, (rs[0]["metric"],))
        line = {"task": task, "variant": variant, "heads": str(heads), "seeds": str(len(rs))}
        for m in metrics:
            line[m] = mean_std([100 * float(r[f"dev_{m}"]) for r in rs])
        main = metrics[0]
        teacher = 100 * float(rs[0][f"teacher_{main}"])
        line["teacher " + main] = f"{teacher:.2f}"
        line["retention %"] = f"{100 * statistics.mean(100 * float(r[f'dev_{main}']) for r in rs) / teacher:.1f}"
        line["params (M)"] = f"{int(rs[0]['params']) / 1e6:.2f}"
        line["ms / batch"] = f"{statistics.median(float(r['latency_ms']) for r in rs):.0f}"
        line["epochs (stage 1 + 2)"] = f"{rs[0]['stage1_epochs']} + {rs[0]['stage2_epochs']}"
        line["steps"] = rs[0]["steps"]
        line["wall (min)"] = f"{statistics.mean(float(r['wall_s']) for r in rs) / 60:.1f}"
        lines.append(line)
    return lines


def markdown(lines: List[Dict[str, str]]) -> str:
    out = []
    for task in dict.fromkeys(line["task"] for line in lines):
        rows = [line for line in lines if line["task"] == task]
        cols = list(dict.fromkeys(k for line in rows for k in line if k != "task"))
        out.append(f"**{get_task(task).folder}** (dev set)\n")
        out.append("| " + " | ".join(cols) + " |")
        out.append("|" + "---|" * len(cols))
        out += ["| " + " | ".join(line.get(c, "") for c in cols) + " |" for line in rows]
        out.append("")
    return "\n".join(out)


def plot(rows: List[Dict[str, str]], path: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    tasks = list(dict.fromkeys(r["task"] for r in rows))
    fig, axes = plt.subplots(1, len(tasks), figsize=(6 * len(tasks), 4), squeeze=False)
    for ax, task in zip(axes[0], tasks):
        main = TASK_METRICS.get(task, (rows[0]["metric"],))[0]
        items = [(f"{v}\n{h}h", [100 * float(r[f"dev_{main}"]) for r in rs])
                 for (t, v, h, _), rs in groups(rows).items() if t == task]
        means = [statistics.mean(vals) for _, vals in items]
        stds = [statistics.stdev(vals) if len(vals) > 1 else 0.0 for _, vals in items]
        ax.bar(range(len(items)), means, yerr=stds, capsize=4, color="tab:blue")
        for i, (_, vals) in enumerate(items):
            ax.plot([i] * len(vals), vals, "k.", markersize=4)
        teacher = 100 * float(next(r for r in rows if r["task"] == task)[f"teacher_{main}"])
        ax.axhline(teacher, color="tab:red", linestyle="--", label=f"teacher {teacher:.1f}")
        ax.set_xticks(range(len(items)), [name for name, _ in items], fontsize=7)
        low = min(min(v) for _, v in items)
        ax.set_ylim(max(0, low - 5), max(teacher, max(max(v) for _, v in items)) + 2)
        ax.set_ylabel(f"dev {main} (%)")
        ax.set_title(f"{get_task(task).folder}: 3-layer students, mean ± std over seeds (dots)")
        ax.legend(loc="lower right", fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def replace_block(readme: str, table: str) -> None:
    with open(readme) as f:
        text = f.read()
    if START not in text or END not in text:
        raise SystemExit(f"{readme} has no {START} ... {END} block to replace")
    new = re.sub(re.escape(START) + ".*?" + re.escape(END), lambda _: f"{START}\n{table}\n{END}", text, flags=re.S)
    tmp = readme + ".tmp"
    with open(tmp, "w") as f:
        f.write(new)
    os.replace(tmp, readme)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--dir", default=resultfile.RESULTS_DIR)
    p.add_argument("--readme", help="replace the table between the quality-table markers of this file")
    args = p.parse_args(argv)
    paths = sorted(glob.glob(os.path.join(args.dir, "quality_*.csv")))
    if not paths:
        raise SystemExit(f"no quality_*.csv in {args.dir}: run benchmarks/quality/run.py first")
    tables = []
    for path in paths:
        machine = os.path.basename(path)[len("quality_"):-len(".csv")]
        rows = resultfile.read_csv(path)
        table = f"Machine: {machine} ({rows[0]['cpu_model']}), commits {', '.join(sorted(set(r['commit'] for r in rows)))}.\n\n"
        table += markdown(summarise(rows))
        base = path[: -len(".csv")]
        with open(base + ".md", "w") as f:
            f.write(table)
        plot(rows, base + ".png")
        print(table)
        tables.append(table)
    if args.readme:
        replace_block(args.readme, "\n".join(tables))
    return 0


if __name__ == "__main__":
    sys.exit(main())
