"""The rows the lr protocol still needs for a task, as lines of a queue (benchmarks/quality/run.py arguments).

    python benchmarks/quality/protocol.py --task sts-b --objective ft kd tinybert mlkd \\
        --results benchmarks/results/quality_cpu-intel-xeon-2core.csv >> my.queue

The protocol (README, Quality): every objective at 12 heads runs the lr grid 5e-5, 1e-4, 2e-4 at seed 42 in
the task's grid precision (grid.yaml `lr_grid_precision`) and budget; while an objective's best is at the top
of what it ran, the next doubled lr is run too; once its best is inside, seeds 43 and 44 run at it. So the
output depends on the rows already landed: run it again after they land. Rows already in the file are never
printed (run.py would skip them anyway).
"""
from __future__ import annotations

import argparse
import os
import sys
from typing import Dict, List

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import table  # noqa: E402

FIRST_GRID = table.LR_GRID[:3]  # every objective runs these; the rest only while the best is at the edge
SEEDS = (42, 43, 44)


def row_args(task: str, objective: str, lr: float, seed: int) -> str:
    """The run.py arguments of one lr-protocol row, named so that table.family() reads it back."""
    base = f"--task {task} --objective {objective} --heads 12 --seed {seed}"
    precision = table.GRID_PRECISION.get(task, "fp32")
    if precision == "fp32" and abs(lr - table.BASE_LR) < 1e-12:
        return base  # the plain row: variant = objective, lr = grid.yaml's
    mantissa, exponent = table.lr_text(lr).split("e")
    args = f"{base} --variant {objective}-lr{table.lr_text(lr)}" + ("+bf16" if precision == "bf16" else "")
    args += f" --set learning_rate={float(mantissa):.1f}e{exponent}"
    return args + (f" --set precision={precision}" if precision != "fp32" else "")


def needed(rows: List[Dict[str, str]], task: str, objectives: List[str]) -> List[str]:
    """The queue lines the protocol needs next for `objectives` on `task`, given the rows already there."""
    runs = table.grid_runs(rows, task)
    out = []
    for objective in objectives:
        by_lr = runs.get(objective, {})
        missing = [lr for lr in FIRST_GRID if 42 not in by_lr.get(lr, {})]
        if missing:
            out += [row_args(task, objective, lr, 42) for lr in missing]
            continue
        best, next_lr = table.grid_best(by_lr, task)
        if next_lr is not None:  # the best is at the edge: double on
            out.append(row_args(task, objective, next_lr, 42))
            continue
        out += [row_args(task, objective, best, s) for s in SEEDS if s not in by_lr[best]]
    return out


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--task", required=True)
    p.add_argument("--objective", nargs="+", default=["ft", "kd", "tinybert", "mlkd"])
    p.add_argument("--results", required=True, help="the quality CSV the rows land in")
    args = p.parse_args(argv)
    task = table.get_task(args.task).name
    rows = table.resultfile.read_csv(args.results) if os.path.exists(args.results) else []
    for line in needed(rows, task, args.objective):
        print(line)
    return 0


if __name__ == "__main__":
    sys.exit(main())
