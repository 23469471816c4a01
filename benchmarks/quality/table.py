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


# the order objectives are listed in: the simple ways first, the method last
OBJECTIVE_ORDER = ("ft", "kd", "tinybert", "minilmv2", "mlkd")


def _order(key: tuple, objective: str) -> tuple:
    """Plain objectives before variants of them (recipe choices, ablations), then more heads first."""
    _, variant, heads, _ = key
    rank = OBJECTIVE_ORDER.index(objective) if objective in OBJECTIVE_ORDER else len(OBJECTIVE_ORDER)
    return (variant != objective, -heads, rank, variant)


def groups(rows: List[Dict[str, str]]) -> "OrderedDict[tuple, List[Dict[str, str]]]":
    """Rows by (task, variant, heads, epochs): tasks in the order they first appear, lines by `_order`."""
    found: "OrderedDict[tuple, List[Dict[str, str]]]" = OrderedDict()
    for r in rows:
        found.setdefault((r["task"], r["variant"], int(r["heads"]), r["epochs"]), []).append(r)
    tasks = list(dict.fromkeys(key[0] for key in found))
    keys = sorted(found, key=lambda k: (tasks.index(k[0]), _order(k, found[k][0]["objective"])))
    return OrderedDict((k, found[k]) for k in keys)


def task_metrics(task: str, rows: List[Dict[str, str]]) -> tuple:
    """The metrics shown for a task, the model-selection one first; an unlisted task shows what its rows chose."""
    return TASK_METRICS.get(task, (rows[0]["metric"],))


def mean_std(values: List[float]) -> str:
    if len(values) == 1:
        return f"{values[0]:.2f}"
    return f"{statistics.mean(values):.2f} ± {statistics.stdev(values):.2f}"


def summarise(rows: List[Dict[str, str]]) -> List[Dict[str, str]]:
    """One line per (task, variant, heads, budget)."""
    lines = []
    for (task, variant, heads, epochs), rs in groups(rows).items():
        metrics = task_metrics(task, rs)
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
    """One panel per task, one horizontal bar per (variant, heads): mean with std, seeds as dots, teacher as a
    line. MLKD's lines are orange, the rivals' grey, so the method reads at a glance among many variants."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    by_task: "OrderedDict[str, list]" = OrderedDict()
    for (task, variant, heads, _), rs in groups(rows).items():
        main = task_metrics(task, rs)[0]
        vals = [100 * float(r[f"dev_{main}"]) for r in rs]
        by_task.setdefault(task, []).append((f"{variant} ({heads}h)", vals, rs[0]["objective"] == "mlkd"))
    sizes = [len(items) for items in by_task.values()]
    fig, axes = plt.subplots(len(sizes), 1, figsize=(8, 1.2 * len(sizes) + 0.28 * sum(sizes)), squeeze=False,
                             gridspec_kw={"height_ratios": [n + 2 for n in sizes]})
    for ax, (task, items) in zip(axes[:, 0], by_task.items()):
        task_rows = [r for r in rows if r["task"] == task]
        main = task_metrics(task, task_rows)[0]
        y = list(range(len(items)))[::-1]  # first line on top, as in the table
        means = [statistics.mean(vals) for _, vals, _ in items]
        stds = [statistics.stdev(vals) if len(vals) > 1 else 0.0 for _, vals, _ in items]
        colors = ["tab:orange" if is_mlkd else "tab:gray" for _, _, is_mlkd in items]
        ax.barh(y, means, xerr=stds, capsize=3, color=colors, height=0.7)
        for yi, (_, vals, _) in zip(y, items):
            ax.plot(vals, [yi] * len(vals), "k.", markersize=4)
        teacher = 100 * float(task_rows[0][f"teacher_{main}"])
        ax.axvline(teacher, color="tab:red", linestyle="--", label=f"teacher {teacher:.1f}")
        ax.set_yticks(y, [name for name, _, _ in items], fontsize=8)
        low = min(min(vals) for _, vals, _ in items)
        ax.set_xlim(max(0, low - 3), max(teacher, max(max(vals) for _, vals, _ in items)) + 1)
        ax.set_xlabel(f"dev {main} (%)")
        ax.set_title(f"{get_task(task).folder}: 3-layer students, mean ± std over seeds (dots)", fontsize=10)
        ax.legend(loc="best", fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
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
