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
HERE_ROOT = os.path.dirname(os.path.dirname(HERE))  # the repository: image links are relative to it
sys.path.insert(0, os.path.dirname(HERE))
import resultfile  # noqa: E402

from mlkd_fast.data import get_task  # noqa: E402

# the metric shown after the task's model-selection one (TaskSpec.metric), for the tasks whose rows record two
SECOND_METRIC = {"mrpc": "f1", "qqp": "f1", "sts-b": "pearson", "squad": "exact_match", "squad_v2": "exact"}
START, END = "<!-- quality-table:start -->", "<!-- quality-table:end -->"
VERDICT_START, VERDICT_END = "<!-- quality-verdict:start -->", "<!-- quality-verdict:end -->"
HEADS_START, HEADS_END = "<!-- quality-heads:start -->", "<!-- quality-heads:end -->"
# the verdict block holds the tasks whose lr grid is complete; this one every task (lr 5e-5-only ones marked)
ALL_VERDICT_START, ALL_VERDICT_END = "<!-- quality-verdict-all:start -->", "<!-- quality-verdict-all:end -->"
STARTS_START, STARTS_END = "<!-- quality-starts:start -->", "<!-- quality-starts:end -->"
SQUAD_START, SQUAD_END = "<!-- quality-squad:start -->", "<!-- quality-squad:end -->"
# the shape of grid.yaml's teacher (all-MiniLM-L6-v2): rows record their teacher's shape since the `teacher`
# column came; every row before it ran this one (no queue passed --teacher-model)
GRID_TEACHER_SHAPE = "6L-384"
BASE_LR = 5e-5  # grid.yaml's distill learning_rate: the lr of a plain row (variant = the objective)
# the lr grid, the same for every objective, doubled on past the edge while an objective's best is at it
LR_GRID = (5e-5, 1e-4, 2e-4, 4e-4, 8e-4)


def _grid_tasks() -> Dict[str, dict]:
    import yaml

    with open(os.path.join(HERE, "grid.yaml")) as f:
        return yaml.safe_load(f)["tasks"]


_GRID_TASKS = _grid_tasks()
GRID_EPOCHS = {task: spec["epochs"] for task, spec in _GRID_TASKS.items()}  # the lr grid's budget (and rows'
# without --epochs); the precision every row of a task's lr grid ran in (the rows choose it with --set)
GRID_PRECISION = {task: spec.get("lr_grid_precision", "fp32") for task, spec in _GRID_TASKS.items()}


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


def task_metrics(task: str) -> tuple:
    """The metrics shown for a task: the model-selection one (the task's own), then its second if it has one."""
    spec = get_task(task)
    return (spec.metric,) + ((SECOND_METRIC[spec.name],) if spec.name in SECOND_METRIC else ())


def mean_std(values: List[float]) -> str:
    if len(values) == 1:
        return f"{values[0]:.2f}"
    return f"{statistics.mean(values):.2f} ± {statistics.stdev(values):.2f}"


def summarise(rows: List[Dict[str, str]]) -> List[Dict[str, str]]:
    """One line per (task, variant, heads, budget)."""
    lines = []
    for (task, variant, heads, epochs), rs in groups(rows).items():
        metrics = task_metrics(task)
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


SUFFIXES = {"grouped", "scaled", "concat", "bf16"}  # variant suffixes naming a head start or a precision


def family(row: Dict[str, str]):
    """(objective, lr, head_init, precision) of a row of the lr protocol: the plain row (lr 5e-5) or
    `<objective>-lr<lr>[+<start>][+bf16]` whose only overrides are that lr (and precision=bf16); None for
    every other row (recipe choices, ablations, off-grid lrs such as 1.5e-4)."""
    objective, variant, overrides = row["objective"], row["variant"], row.get("overrides", "").split()
    head_init, precision = row.get("head_init") or "concat", row.get("precision") or "fp32"
    if variant == objective and not overrides:
        return (objective, BASE_LR, head_init, precision) if head_init == "concat" and precision == "fp32" else None
    m = re.fullmatch(re.escape(objective) + r"-lr([0-9.]+e-[0-9]+)((?:\+[a-z0-9]+)*)", variant)
    if not m:
        return None
    lr, suffixes = float(m.group(1)), set(filter(None, m.group(2).split("+")))
    if not suffixes <= SUFFIXES or not any(abs(lr - g) < 1e-12 for g in LR_GRID):
        return None
    others = {o for o in overrides if not o.startswith("learning_rate=")}
    lrs = [float(o.split("=", 1)[1]) for o in overrides if o.startswith("learning_rate=")]
    if len(lrs) != 1 or abs(lrs[0] - lr) > 1e-12 or others - {"precision=bf16"}:
        return None
    if ("bf16" in suffixes) != (precision == "bf16") or suffixes - {"bf16"} - ({head_init} - {"concat"}):
        return None
    return objective, lr, head_init, precision


def _short_budget(row: Dict[str, str]) -> bool:
    """Whether the row ran the task's grid budget (grid.yaml; the lr grid's budget)."""
    return row["epochs"] == str(GRID_EPOCHS.get(row["task"], row["epochs"]))


def _lr_of(row: Dict[str, str]):
    """The learning rate of a row of the lr grid (12 heads, AdamW, the grid's precision and budget), or None."""
    fam = family(row)
    if (fam is None or row["heads"] != "12" or fam[2] != "concat" or fam[3] != GRID_PRECISION.get(row["task"], "fp32")
            or not _short_budget(row)):
        return None
    return fam[1]


GridRuns = Dict[str, Dict[float, Dict[int, Dict[str, str]]]]  # objective -> lr -> seed -> row


def grid_runs(rows: List[Dict[str, str]], task: str) -> GridRuns:
    """The lr-grid rows of `task` (see _lr_of) as objective -> lr -> seed -> row."""
    runs: GridRuns = {}
    for r in rows:
        lr = _lr_of(r) if r["task"] == task else None
        if lr is not None:
            runs.setdefault(r["objective"], {}).setdefault(lr, {})[int(r["seed"])] = r
    return runs


def grid_best(by_lr: Dict[float, Dict[int, Dict[str, str]]], task: str):
    """(best lr, next lr) of one objective's seed-42 grid: the best by the main metric, then the second; the next
    is the doubled lr the protocol runs while the best is at the top of what ran (None once inside, or at
    LR_GRID's end). (None, None) while seed 42 ran no lr."""
    grid = {lr: seeds[42] for lr, seeds in by_lr.items() if 42 in seeds}
    if not grid:
        return None, None
    metrics = task_metrics(task)
    best = max(grid, key=lambda lr: tuple(float(grid[lr][f"dev_{m}"]) for m in metrics))
    top = max(grid)
    beyond = [lr for lr in LR_GRID if lr > top * (1 + 1e-9)]
    return best, (beyond[0] if best == top and beyond else None)


def best_lr_table(rows: List[Dict[str, str]], task: str, reference: str = "mlkd") -> List[Dict[str, str]]:
    """Every objective at its own best lr of the seed-42 grid (main metric, then the second), its seeds at that
    lr as mean +- std, and the paired gap of `reference` minus it over the seeds both have, with the verdict:
    `reference` beats it / it beats `reference` only where the mean paired gap exceeds the larger of the two
    spreads (sample std over seeds), "level" otherwise."""
    runs = grid_runs(rows, task)
    if not runs:
        return []
    metrics = task_metrics(task)
    best, next_lr = {}, {}
    for objective, by_lr in runs.items():
        lr, next_lr[objective] = grid_best(by_lr, task)
        if lr is not None:
            best[objective] = lr
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
            mine, theirs = _scores(seeds.values(), main), _scores(ref.values(), main)
            line[f"{reference} - it, paired ({main})"] = _paired(theirs, mine)
            line["verdict"] = verdict(reference, objective, theirs, mine)
            partial = sum(42 in v for v in by_lr.values()) < 3 or sum(42 in v for v in runs[reference].values()) < 3
            if len(set(mine) & set(theirs)) < 2:
                if next_lr[objective] is not None:  # the protocol doubles on first (protocol.py)
                    line["verdict"] += f" (best at the lr grid's edge: {lr_text(next_lr[objective])} next)"
            elif partial:
                line["verdict"] += " at 5e-5 only (lr grid not run)" if len(by_lr) == 1 else " (lr grid incomplete)"
        lines.append(line)
    return lines


def best_lrs(rows: List[Dict[str, str]], task: str) -> Dict[str, float]:
    """Each objective's best lr of the seed-42 grid of `task` (main metric, then the second)."""
    lines = best_lr_table(rows, task)
    return {line["objective"]: float(line["best lr"]) for line in lines}


def verdict(a: str, b: str, sa: Dict[int, float], sb: Dict[int, float]) -> str:
    """The rule of every verdict here: "a beats b" only where the mean of a - b, paired by seed, exceeds the
    larger of the two spreads (sample std over each one's seeds); "level" otherwise; none from one seed."""
    common = sorted(set(sa) & set(sb))
    if len(common) < 2:
        return "one seed: no verdict"
    gap = statistics.mean(sa[k] - sb[k] for k in common)
    spread = max((statistics.stdev(s.values()) for s in (sa, sb) if len(s) > 1), default=0.0)
    if gap > spread:
        return f"{a} beats {b}"
    if -gap > spread:
        return f"{b} beats {a}"
    return f"level (gap within the larger std {spread:.2f})"


def _paired(a: Dict[int, float], b: Dict[int, float]) -> str:
    """mean +- std of a - b over the seeds both have."""
    common = sorted(set(a) & set(b))
    return mean_std([a[k] - b[k] for k in common]) + f" (n={len(common)})" if common else ""


def _scores(rows, metric: str) -> Dict[int, float]:
    return {int(r["seed"]): 100 * float(r[f"dev_{metric}"]) for r in rows}


def _cell(scores: Dict[int, float]) -> str:
    return f"{mean_std(list(scores.values()))} (n={len(scores)})" if scores else ""


def _protocol_rows(rows, task: str, objective: str, lr: float, heads: int, head_init: str, precision=None,
                   short=True) -> List[Dict[str, str]]:
    """The rows of one cell: the objective at its lr, heads, head start (12 heads: any), precision (default: the
    task's grid precision), budget."""
    precision = precision or GRID_PRECISION.get(task, "fp32")
    out = []
    for r in rows:
        fam = family(r)
        if (r["task"] != task or fam is None or int(r["heads"]) != heads or fam[0] != objective
                or abs(fam[1] - lr) > 1e-12 or fam[3] != precision or _short_budget(r) != short):
            continue
        if heads == 12 or fam[2] == head_init:
            out.append(r)
    return out


def starts_table(rows, task: str, heads: int = 4, objective: str = "mlkd") -> List[Dict[str, str]]:
    """The head starts at `heads` heads, the objective at its best lr and the grid budget: the main metrics and
    the paired gap to the same objective at 12 heads."""
    lr = best_lrs(rows, task).get(objective)
    if lr is None:
        return []
    metrics = task_metrics(task)
    full = _scores(_protocol_rows(rows, task, objective, lr, 12, "concat"), metrics[0])
    lines = []
    for start in ("concat", "scaled", "grouped"):
        rs = _protocol_rows(rows, task, objective, lr, heads, start)
        if rs:
            line = {"start": start, **{m: _cell(_scores(rs, m)) for m in metrics}}
            line[f"12 heads - it ({metrics[0]}, paired)"] = _paired(full, _scores(rs, metrics[0]))
            lines.append(line)
    return lines


def heads_latency(results_dir: str, cpu_model: str, shape: str = "3L-384", batch: int = 32,
                  length: int = 128) -> Dict[int, float]:
    """heads -> median ms per batch of the `shape` student (sdpa) from benchmark_heads_latency.py's newest run
    on the processor `cpu_model` (the quality rows'); empty if it has not run there."""
    found: Dict[int, tuple] = {}
    for path in glob.glob(os.path.join(results_dir, "heads_latency_*.csv")):
        for r in resultfile.read_csv(path):
            if (r.get("model") == shape and r.get("attn") == "sdpa" and r.get("batch") == str(batch)
                    and r.get("cpu_model") == cpu_model
                    and r.get("L") == str(length) and r.get("status") == "ok"):
                stamp = r.get("timestamp", "")
                if int(r["heads"]) not in found or stamp > found[int(r["heads"])][0]:
                    found[int(r["heads"])] = (stamp, float(r["median_ms"]), r.get("cpu_model", ""))
    return {h: v[1] for h, v in found.items()}


def heads_table(rows, task: str, latency: Dict[int, float], start: str = "grouped",
                objectives=("kd", "mlkd")) -> List[Dict[str, str]]:
    """One line per head count: each objective at its best lr (12 heads: the lr rows; fewer: from `start`),
    the grid budget; the main metrics, MLKD - KD paired by seed, MLKD's loss against its 12 heads, latency."""
    lrs = best_lrs(rows, task)
    metrics = task_metrics(task)
    main = metrics[0]
    cells = {(o, h): _protocol_rows(rows, task, o, lrs[o], h, start) for o in objectives if o in lrs
             for h in (12, 6, 4, 3)}
    lines = []
    for h in (12, 6, 4, 3):
        if not any(cells.get((o, h)) for o in objectives):
            continue
        line = {"heads": str(h), "ms / batch of 32": f"{latency[h]:.1f}" if h in latency else ""}
        for o in objectives:
            for m in metrics:
                line[f"{o} {m}"] = _cell(_scores(cells.get((o, h), []), m))
        a, b = objectives[-1], objectives[0]
        line[f"{a} - {b} ({main}, paired)"] = _paired(_scores(cells.get((a, h), []), main),
                                                      _scores(cells.get((b, h), []), main))
        line[f"{a}: 12 heads - it (paired)"] = ("" if h == 12 else
                                                _paired(_scores(cells.get((a, 12), []), main),
                                                        _scores(cells.get((a, h), []), main)))
        lines.append(line)
    return lines


def budget_cells(rows, task: str) -> Dict[tuple, Dict[tuple, List[Dict[str, str]]]]:
    """(objective, heads, start, lr) -> (epochs, precision) -> rows, for every config of the lr protocol that has
    rows at a longer budget than the grid's (at its best lr, or at another lr of the grid tried at that budget);
    configs and budgets in the order the rows ran."""
    def config(r):
        fam = family(r)
        if r["task"] != task or fam is None:
            return None
        return fam[0], int(r["heads"]), fam[2] if int(r["heads"]) < 12 else "concat", fam[1]

    keyed = [(r, config(r)) for r in rows]
    configs = list(dict.fromkeys(c for r, c in keyed if c is not None and not _short_budget(r)))
    budgets = list(dict.fromkeys((int(r["epochs"]), family(r)[3]) for r, c in keyed if c in configs))
    cells: Dict[tuple, Dict[tuple, List[Dict[str, str]]]] = {}
    for objective, heads, start, lr in configs:
        for epochs, precision in budgets:
            rs = [r for r in _protocol_rows(rows, task, objective, lr, heads, start, precision,
                                            short=epochs == GRID_EPOCHS.get(task))
                  if int(r["epochs"]) == epochs]
            if rs:
                cells.setdefault((objective, heads, start, lr), {})[(epochs, precision)] = rs
    return cells


def _config_text(config: tuple) -> str:
    objective, heads, start, lr = config
    return f"{objective} {heads}h" + (f" {start}" if heads < 12 else "") + f" lr {lr_text(lr)}"


def budget_table(cells: Dict[tuple, Dict[tuple, List[Dict[str, str]]]], main: str) -> List[Dict[str, str]]:
    """Per (objective, heads, start, lr) of `cells` (budget_cells): its `main` metric per budget and precision."""
    budgets = list(dict.fromkeys(b for by_budget in cells.values() for b in by_budget))
    lines = []
    for (objective, heads, start, lr), by_budget in cells.items():
        line = {"objective": objective, "heads": str(heads), "start": start if heads < 12 else "",
                "lr": lr_text(lr)}
        for epochs, precision in budgets:
            rs = by_budget.get((epochs, precision))
            split = f"{rs[0]['stage1_epochs']} + {rs[0]['stage2_epochs']}" if rs else ""
            line[f"{epochs} epochs, {precision}"] = f"{_cell(_scores(rs, main))} [{split}]" if rs else ""
        lines.append(line)
    return lines


# the comparisons the longer budget is run for (issue 23): the first claim at 12 heads, the 4-head gap, and
# MLKD against KD at 4 heads, as (objective, heads, start); the left side at its best lr of the grid, the right
# side at every lr it ran at the longer budget
BUDGET_PAIRS = ((("mlkd", 12, "concat"), ("tinybert", 12, "concat")), (("mlkd", 12, "concat"), ("mlkd", 4, "grouped")),
                (("mlkd", 4, "grouped"), ("kd", 4, "grouped")))


def budget_gaps_table(cells: Dict[tuple, Dict[tuple, List[Dict[str, str]]]], main: str,
                      lrs: Dict[str, float]) -> List[Dict[str, str]]:
    """Each pair of BUDGET_PAIRS at each budget where both ran in `cells` (budget_cells): the paired gap of the
    `main` metric and the verdict (the same rule as the best-lr table). `lrs`: each objective's best lr of the
    grid. Each budget's own precision on both sides; the longer budgets are bf16."""
    lines = []
    for left, right in BUDGET_PAIRS:
        a = (*left, lrs.get(left[0]))
        for b in (c for c in cells if c[:3] == right and c != a):
            for budget in dict.fromkeys(k for c in (a, b) for k in cells.get(c, {})):
                sa, sb = (_scores(cells.get(c, {}).get(budget, []), main) for c in (a, b))
                if sa and sb and set(sa) & set(sb):
                    lines.append({"comparison": f"{_config_text(a)} - {_config_text(b)}",
                                  "budget": f"{budget[0]} epochs, {budget[1]}",
                                  f"paired gap ({main})": _paired(sa, sb),
                                  "verdict": verdict(_config_text(a), _config_text(b), sa, sb)})
    return lines


def _md_table(lines: List[Dict[str, str]]) -> List[str]:
    cols = list(dict.fromkeys(k for line in lines for k in line))
    return (["| " + " | ".join(cols) + " |", "|" + "---|" * len(cols)]
            + ["| " + " | ".join(line.get(c, "") for c in cols) + " |" for line in lines])


def starts_markdown(rows) -> str:
    out = []
    for task in dict.fromkeys(r["task"] for r in rows):
        starts = starts_table(rows, task)
        if starts:
            out.append(f"**{get_task(task).folder}, starts for 4 heads** (MLKD at its best lr, the grid budget)\n")
            out += _md_table(starts) + [""]
    return "\n".join(out)


def heads_markdown(rows, results_dir: str) -> str:
    out = []
    latency = heads_latency(results_dir, rows[0]["cpu_model"])
    for task in dict.fromkeys(r["task"] for r in rows):
        # the two budget tables read one set of cells
        cells, main = budget_cells(rows, task), task_metrics(task)[0]
        heads, budget = heads_table(rows, task, latency), budget_table(cells, main)
        folder = get_task(task).folder
        if any(line["heads"] != "12" for line in heads):
            out.append(f"**{folder}, heads** (each objective at its best lr, the grid budget; fewer heads start "
                       "`grouped`; latency: benchmark_heads_latency.py, 3L-384 student, sdpa, L=128)\n")
            out += _md_table(heads) + [""]
        if budget:
            out.append(f"**{folder}, budgets** (main metric, mean ± std over seeds [stage 1 + stage 2 epochs])\n")
            out += _md_table(budget) + [""]
            out.append(f"**{folder}, gaps by budget** (paired by seed; the verdict rule of the best-lr tables; the left "
                       "side at its best lr of the grid, the right at each lr it ran at the longer budget)\n")
            out += _md_table(budget_gaps_table(cells, main, best_lrs(rows, task))) + [""]
    return "\n".join(out)


def verdict_markdown(rows: List[Dict[str, str]], graded_only: bool = False) -> str:
    """The best-lr table of each task; `graded_only`: only tasks where every objective ran the lr grid."""
    out = []
    for task in dict.fromkeys(r["task"] for r in rows):
        if get_task(task).qa:  # question answering has its own table (one lr, its own split): squad_markdown
            continue
        lines = best_lr_table(rows, task)
        if not lines or (graded_only and any("grid" in line.get("verdict", "") for line in lines)):
            continue
        cols = list(dict.fromkeys(k for line in lines for k in line))
        precision = {"fp32": "fp32", "bf16": "bf16 autocast"}[GRID_PRECISION.get(task, "fp32")]
        out.append(f"**{get_task(task).folder}**: every objective at its own best lr (AdamW, 12 heads, "
                   f"{GRID_EPOCHS[task]}-epoch budget, {precision}; the lr chosen on seed 42, then seeds 43 and 44 at it)\n")
        out.append("| " + " | ".join(cols) + " |")
        out.append("|" + "---|" * len(cols))
        out += ["| " + " | ".join(line.get(c, "") for c in cols) + " |" for line in lines]
        out.append("")
    return "\n".join(out)


QA_LABELS = {"f1": "F1", "exact_match": "EM", "exact": "EM"}  # the official scripts' keys as the table heads them


def squad_markdown(rows: List[Dict[str, str]]) -> str:
    """Question answering: the teacher and each student (plain rows) with the official EM/F1 on the held-out
    articles, the split and the budget said once above the table."""
    out = []
    for task in dict.fromkeys(r["task"] for r in rows if get_task(r["task"]).qa):
        task_rows = [r for r in rows if r["task"] == task and r["variant"] == r["objective"]]
        if not task_rows:
            continue
        metrics = task_metrics(task)
        first = task_rows[0]
        lines = [dict({"model": f"teacher ({first.get('teacher') or GRID_TEACHER_SHAPE}, fine-tuned)", "seeds": ""},
                      **{QA_LABELS[m]: f"{100 * float(first[f'teacher_{m}']):.2f}" for m in metrics})]
        for line in summarise(task_rows):
            lines.append(dict({"model": f"{line['variant']} ({line['heads']}h, {first['student']})", "seeds": line["seeds"]},
                              **{QA_LABELS[m]: line[m] for m in metrics},
                              **{k: line[k] for k in ("retention %", "params (M)", "ms / batch", "epochs (stage 1 + 2)",
                                                      "wall (min)")}))
        out.append(f"**{'SQuAD v2.0' if get_task(task).version_2 else 'SQuAD v1.1'}**, official scores on held-out "
                   f"articles ({first.get('split', '')}; {first['precision']}, lr "
                   f"{lr_text(float(first.get('learning_rate') or BASE_LR))}, the whole distillation in the wall time)\n")
        out += _md_table(lines) + [""]
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
        main = task_metrics(task)[0]
        vals = [100 * float(r[f"dev_{main}"]) for r in rs]
        by_task.setdefault(task, []).append((f"{variant} ({heads}h)", vals, rs[0]["objective"] == "mlkd"))
    sizes = [len(items) for items in by_task.values()]
    fig, axes = plt.subplots(len(sizes), 1, figsize=(8, 1.2 * len(sizes) + 0.28 * sum(sizes)), squeeze=False,
                             gridspec_kw={"height_ratios": [n + 2 for n in sizes]})
    for ax, (task, items) in zip(axes[:, 0], by_task.items()):
        task_rows = [r for r in rows if r["task"] == task]
        main = task_metrics(task)[0]
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


def plot_heads(rows, latency: Dict[int, float], path: str, task: str = "mrpc", objectives=("kd", "mlkd"),
               start: str = "grouped") -> bool:
    """Accuracy (main metric) against measured latency, one line per objective through 12, 6, 4, 3 heads, the
    seeds' std as error bars. False (no file) where the latency or fewer-head rows are missing."""
    lrs = best_lrs(rows, task)
    main = task_metrics(task)[0]
    lines = {}
    for o in objectives:
        pts = []
        for h in (12, 6, 4, 3):
            scores = list(_scores(_protocol_rows(rows, task, o, lrs[o], h, start), main).values()) if o in lrs else []
            if scores and h in latency:
                pts.append((latency[h], statistics.mean(scores), statistics.stdev(scores) if len(scores) > 1 else 0, h))
        if len(pts) > 1:
            lines[o] = pts
    if not lines:
        return False
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 4))
    for o, pts in lines.items():
        ax.errorbar([p[0] for p in pts], [p[1] for p in pts], yerr=[p[2] for p in pts], marker="o", capsize=3,
                    label=f"{o} (lr {lr_text(lrs[o])})", color="tab:orange" if o == "mlkd" else "tab:gray")
        for x, y, _, h in pts:
            ax.annotate(f"{h}h", (x, y), textcoords="offset points", xytext=(4, 4), fontsize=8)
    teacher = 100 * float(next(r for r in rows if r["task"] == task)[f"teacher_{main}"])
    ax.axhline(teacher, color="tab:red", linestyle="--", label=f"teacher {teacher:.1f}")
    ax.set_xlabel("CPU latency, ms per batch of 32 (L=128)")
    ax.set_ylabel(f"dev {main} (%)")
    ax.set_title(f"{get_task(task).folder}: 3-layer students by head count (start: {start})", fontsize=10)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return True


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
    tables, verdicts, all_verdicts, heads_parts, starts_parts, squad_parts = [], [], [], [], [], []
    for path in paths:
        machine = os.path.basename(path)[len("quality_"):-len(".csv")]
        rows = resultfile.read_csv(path)
        commits = sorted(set(r["commit"] for r in rows))
        table = (f"Machine: {machine} ({rows[0]['cpu_model']}); {len(rows)} rows from {len(commits)} commits "
                 "(each row's in the CSV's `commit` column).\n\n")
        verdict = verdict_markdown(rows)
        heads = heads_markdown(rows, args.dir)
        table += markdown(summarise(rows))
        base = path[: -len(".csv")]
        starts, squad = starts_markdown(rows), squad_markdown(rows)
        with open(base + ".md", "w") as f:
            f.write("\n".join(part for part in (verdict, starts, heads, squad, table) if part))
        plot(rows, base + ".png")
        if plot_heads(rows, heads_latency(args.dir, rows[0]["cpu_model"]), base + "_heads.png"):
            heads += f"\n![accuracy against latency by head count]({os.path.relpath(base + '_heads.png', HERE_ROOT)})\n"
        print(verdict + "\n" + heads + "\n" + table)
        tables.append(table)
        verdicts.append(verdict_markdown(rows, graded_only=True))
        all_verdicts.append(verdict)
        heads_parts.append(heads)
        starts_parts.append(starts)
        squad_parts.append(squad)
    for readme in args.readme:
        with open(readme) as f:
            text = f.read()
        blocks = [(START, END, "\n".join(tables)), (VERDICT_START, VERDICT_END, "\n".join(v for v in verdicts if v)),
                  (HEADS_START, HEADS_END, "\n".join(h for h in heads_parts if h)),
                  (ALL_VERDICT_START, ALL_VERDICT_END, "\n".join(v for v in all_verdicts if v)),
                  (STARTS_START, STARTS_END, "\n".join(p for p in starts_parts if p)),
                  (SQUAD_START, SQUAD_END, "\n".join(p for p in squad_parts if p))]
        present = [(a, b, body) for a, b, body in blocks if a in text and b in text]
        if not present:
            raise SystemExit(f"{readme} has none of the blocks {[b[0] for b in blocks]} to replace")
        for a, b, body in present:
            replace_block(readme, body, a, b)
    return 0


if __name__ == "__main__":
    sys.exit(main())
