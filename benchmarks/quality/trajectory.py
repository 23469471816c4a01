"""Dev-score trajectories of quality runs: every in-epoch evaluation and epoch end of each run's last stage,
with the epoch's mean loss terms, from the run folders under runs/quality/<task>/ (history.json).

    python benchmarks/quality/trajectory.py --task mrpc mlkd_h4_s42 kd_h4_s42
"""
from __future__ import annotations

import argparse
import json
import os
import sys

HERE = os.path.dirname(os.path.abspath(__file__))
RUNS = os.path.join(os.path.dirname(os.path.dirname(HERE)), "runs", "quality")


def trajectory(run_dir: str, metric: str):
    with open(os.path.join(run_dir, "history.json")) as f:
        saved = json.load(f)
    points = [(e["stage"], e["epoch"], e["step"], e["metrics"][metric]) for e in saved.get("evals", [])]
    steps, total = {}, 0
    for h in saved["history"]:
        total += h["steps"]
        steps[(h.get("stage"), h["epoch"])] = total
        if "metrics" in h:
            points.append((h.get("stage"), h["epoch"], total, h["metrics"][metric]))
    epochs = [{k: v for k, v in h.items() if isinstance(v, float)} | {"stage": h.get("stage"), "epoch": h["epoch"]}
              for h in saved["history"]]
    return sorted(points, key=lambda p: p[2]), epochs, saved["best"]


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--task", default="mrpc")
    p.add_argument("--metric", default="accuracy")
    p.add_argument("runs", nargs="+", help="run folder names, e.g. mlkd_h4_s42")
    args = p.parse_args(argv)
    for name in args.runs:
        points, epochs, best = trajectory(os.path.join(RUNS, args.task, name), args.metric)
        print(f"{name}: best {args.metric} {100 * best['value']:.2f} at step {best.get('step')}")
        print("  dev " + args.metric + ": " + " ".join(f"{s}:{100 * v:.1f}" for _, _, s, v in points))
        for e in epochs:
            terms = " ".join(f"{k}={v:.4f}" for k, v in e.items() if k not in ("stage", "epoch"))
            print(f"  stage {e['stage']} epoch {e['epoch']}: {terms}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
