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
VERDICT_START, VERDICT_END = "<!-- quality-verdict:start -->", "<!-- quality-verdict:end -->"
BASE_LR = 5e-5  # grid.yaml's distill learning_rate: the lr of a plain row (variant = the objective)
# the lr grid, the same for every objective, doubled on past the edge while an objective's best is at it
LR_GRID = (5e-5, 1e-4, 2e-4, 4e-4, 8e-4)


def lr_text(lr: float) -> str:
    """5e-05 -> 5e-5, 0.00015 -> 1.5e-4."""
    mantissa, exponent = f"{lr:.1e}".split("e")
    return f"{mantissa.rstrip('0').rstrip('.')}e{int(exponent)}"


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


def _lr_of(row: Dict[str, str]):
    """The learning rate of a row of the lr grid (12 heads, AdamW, no other override), or None for other rows."""
    if row["heads"] != "12" or row.get("head_init", "concat") not in ("", "concat"):
        return None
    overrides = row.get("overrides", "")
    if row["variant"] == row["objective"] and not overrides:
        return BASE_LR
    if row["variant"].startswith(row["objective"] + "-lr") and re.fullmatch(r"learning_rate=[0-9.e+-]+", overrides):
        lr = float(overrides.split("=", 1)[1])
        return lr if any(abs(lr - g) < 1e-12 for g in LR_GRID) else None  # off-grid rows (1.5e-4) stay out
    return None


def best_lr_table(rows: List[Dict[str, str]], task: str, reference: str = "mlkd") -> List[Dict[str, str]]:
    """Every objective at its own best lr of the seed-42 grid (main metric, then the second), its seeds at that
    lr as mean +- std, and the paired gap of `reference` minus it over the seeds both have, with the verdict:
    `reference` beats it / it beats `reference` only where the mean paired gap exceeds the larger of the two
    spreads (sample std over seeds), "level" otherwise."""
    task_rows = [r for r in rows if r["task"] == task and _lr_of(r) is not None]
    if not task_rows:
        return []
    metrics = task_metrics(task, task_rows)
    score = lambda r: tuple(100 * float(r[f"dev_{m}"]) for m in metrics)  # noqa: E731
    runs: Dict[str, Dict[float, Dict[int, Dict[str, str]]]] = {}
    for r in task_rows:
        runs.setdefault(r["objective"], {}).setdefault(_lr_of(r), {})[int(r["seed"])] = r
    best = {}
    for objective, by_lr in runs.items():
        grid = {lr: seeds[42] for lr, seeds in by_lr.items() if 42 in seeds}
        if grid:
            best[objective] = max(grid, key=lambda lr: score(grid[lr]))
    main = metrics[0]
    ref = runs.get(reference, {}).get(best.get(reference), {})
    lines = []
    for objective in sorted(best, key=lambda o: OBJECTIVE_ORDER.index(o) if o in OBJECTIVE_ORDER else 99):
        by_lr, lr = runs[objective], best[objective]
        seeds = by_lr[lr]
        line = {"objective": objective,
                "seed-42 grid (lr: " + main + ")": ", ".join(f"{lr_text(g)}: {100 * float(by_lr[g][42][f'dev_{main}']):.2f}"
                                                            for g in sorted(by_lr) if 42 in by_lr[g]),
                "best lr": lr_text(lr), "seeds": ",".join(str(k) for k in sorted(seeds))}
        for m in metrics:
            line[m] = mean_std([100 * float(r[f"dev_{m}"]) for r in seeds.values()])
        if objective != reference and ref:
            common = sorted(set(seeds) & set(ref))
            gaps = [100 * (float(ref[k][f"dev_{main}"]) - float(seeds[k][f"dev_{main}"])) for k in common]
            spread = max((statistics.stdev(100 * float(r[f"dev_{main}"]) for r in group.values())
                          for group in (seeds, ref) if len(group) > 1), default=0.0)
            line[f"{reference} - it, paired ({main})"] = mean_std(gaps) + f" (n={len(common)})"
            mean_gap = statistics.mean(gaps)
            partial = sum(42 in v for v in by_lr.values()) < 3 or sum(42 in v for v in runs[reference].values()) < 3
            if len(common) < 2:
                line["verdict"] = "one seed: no verdict"
            elif mean_gap > spread:
                line["verdict"] = f"{reference} beats {objective}"
            elif -mean_gap > spread:
                line["verdict"] = f"{objective} beats {reference}"
            else:
                line["verdict"] = f"level (|gap| <= larger std {spread:.2f})"
            if partial and len(common) >= 2:
                line["verdict"] += " at 5e-5 only (lr grid not run)" if len(by_lr) == 1 else " (lr grid incomplete)"
        lines.append(line)
    return lines


def verdict_markdown(rows: List[Dict[str, str]]) -> str:
    out = []
    for task in dict.fromkeys(r["task"] for r in rows):
        lines = best_lr_table(rows, task)
        if not lines:
            continue
        cols = list(dict.fromkeys(k for line in lines for k in line))
        out.append(f"**{get_task(task).folder}**: every objective at its own best lr (AdamW, 12 heads, 3-epoch budget; "
                   "the lr chosen on seed 42, then seeds 43 and 44 at it)\n")
        out.append("| " + " | ".join(cols) + " |")
        out.append("|" + "---|" * len(cols))
        out += ["| " + " | ".join(line.get(c, "") for c in cols) + " |" for line in lines]
        out.append("")
    return "\n".join(out)


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


def replace_block(readme: str, table: str, start: str = START, end: str = END) -> None:
    with open(readme) as f:
        text = f.read()
    if start not in text or end not in text:
        raise SystemExit(f"{readme} has no {start} ... {end} block to replace")
    new = re.sub(re.escape(start) + ".*?" + re.escape(end), lambda _: f"{start}\n{table}\n{end}", text, flags=re.S)
    tmp = readme + ".tmp"
    with open(tmp, "w") as f:
        f.write(new)
    os.replace(tmp, readme)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--dir", default=resultfile.RESULTS_DIR)
    p.add_argument("--readme", action="append", default=[],
                   help="replace the blocks between the quality-table and quality-verdict markers of this file "
                        "(each block it has; repeatable)")
    args = p.parse_args(argv)
    paths = sorted(glob.glob(os.path.join(args.dir, "quality_*.csv")))
    if not paths:
        raise SystemExit(f"no quality_*.csv in {args.dir}: run benchmarks/quality/run.py first")
    tables, verdicts = [], []
    for path in paths:
        machine = os.path.basename(path)[len("quality_"):-len(".csv")]
        rows = resultfile.read_csv(path)
        table = f"Machine: {machine} ({rows[0]['cpu_model']}), commits {', '.join(sorted(set(r['commit'] for r in rows)))}.\n\n"
        verdict = verdict_markdown(rows)
        table += markdown(summarise(rows))
        base = path[: -len(".csv")]
        with open(base + ".md", "w") as f:
            f.write((verdict + "\n" if verdict else "") + table)
        plot(rows, base + ".png")
        print(verdict + "\n" + table)
        tables.append(table)
        verdicts.append(verdict)
    for readme in args.readme:
        with open(readme) as f:
            text = f.read()
        blocks = [(START, END, "\n".join(tables)), (VERDICT_START, VERDICT_END, "\n".join(v for v in verdicts if v))]
        present = [(a, b, body) for a, b, body in blocks if a in text and b in text]
        if not present:
            raise SystemExit(f"{readme} has neither a {START} nor a {VERDICT_START} block to replace")
        for a, b, body in present:
            replace_block(readme, body, a, b)
    return 0


if __name__ == "__main__":
    sys.exit(main())
