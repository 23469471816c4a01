"""Loss terms of two quality runs step by step (metrics.jsonl of runs/quality/<task>/<run>/), e.g. a run reading
an fp16 teacher cache against the fp32 run of the same seed: at the first step the student, batch and
teacher are the same, so the terms differ only by what differs between the runs; later steps add the
drift of the students apart.

    python benchmarks/quality/compare_losses.py --task mrpc mlkd_h12_s42 mlkd-cache-fp16_h12_s42
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import sys

from trajectory import RUNS


def train_steps(run_dir: str):
    """(stage, step) -> the logged loss terms of that training step."""
    out = {}
    with open(os.path.join(run_dir, "metrics.jsonl")) as f:
        for line in f:
            r = json.loads(line)
            if r.get("kind") == "train":
                out[r["stage"], r["step"]] = {k: v for k, v in r.items() if k not in ("kind", "stage", "epoch", "step", "lr", "time")}
    return out


def compare(a: dict, b: dict):
    """Per stage and term: the relative difference at the stage's first step, and its median over the stage."""
    rows = []
    for stage in sorted({s for s, _ in a}):
        steps = sorted(k for k in a if k[0] == stage and k in b)
        for term in a[steps[0]]:
            rel = [abs(a[k][term] - b[k][term]) / max(abs(a[k][term]), 1e-12) for k in steps if term in b[k]]
            if rel and abs(a[steps[0]][term]) > 0:
                rows.append((stage, term, a[steps[0]][term], b[steps[0]][term], rel[0], statistics.median(rel), len(rel)))
    return rows


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--task", default="mrpc")
    p.add_argument("--runs-dir", default=RUNS)
    p.add_argument("runs", nargs=2, help="two run folder names under <runs-dir>/<task>/")
    args = p.parse_args(argv)
    a, b = (train_steps(os.path.join(args.runs_dir, args.task, r)) for r in args.runs)
    print(f"{args.runs[0]} (A) against {args.runs[1]} (B)")
    print("stage | term | A at step 1 | B at step 1 | relative difference at step 1 | median over the stage | steps")
    for stage, term, x, y, first, med, n in compare(a, b):
        print(f"{stage} | {term} | {x:.6g} | {y:.6g} | {first:.2e} | {med:.2e} | {n}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
