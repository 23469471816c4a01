"""What a filled teacher-output cache saves a whole run: `distill()` end to end, without the cache and
reading a cache that an earlier run filled, for another seed and for another objective.

    python benchmarks/benchmark_cache_reuse.py           # 6-layer teacher, 1-layer student, ~1 min on 2 cores
    python benchmarks/benchmark_cache_reuse.py --quick   # seconds (CI)

Per repeat, in this order (one process, the same machine, interleaved so that drift hits every mode):
    mlkd, no cache | mlkd, builds the cache | mlkd, another seed, reads it | kd, no cache | kd, reads it
(kd reads mlkd's cache: its logits are among the features mlkd stored). Each time is the whole `distill()`
call: setup, both stages, evaluation, saving. Rows hold the median over repeats and the speed-up of a run
reading the cache over the same run without it. Random weights: timing does not depend on them.
"""
from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time

import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import harness  # noqa: E402
import hostinfo  # noqa: E402
import resultfile  # noqa: E402
from benchmark_recipe import bert, dataset  # noqa: E402

from mlkd_fast import DistillConfig, build_student, distill  # noqa: E402

# (objective, cache use, seed offset): the five runs of one repeat, in order
MODES = (("mlkd", "none", 0), ("mlkd", "build", 0), ("mlkd", "read", 1), ("kd", "none", 0), ("kd", "read", 0))


def one_run(teacher, train, dev, objective, cache_root, seed, epochs, batch_size, out_dir) -> float:
    torch.manual_seed(seed)
    student = build_student(teacher, 1)
    cfg = DistillConfig(objective=objective, stage1_epochs=epochs, stage2_epochs=epochs, batch_size=batch_size,
                        eval_batch_size=64, splits=4, device="cpu", seed=seed, teacher_cache=cache_root)
    start = time.perf_counter()
    distill(teacher, student, train, eval_data=dev, config=cfg, output_dir=out_dir, progress=False)
    return time.perf_counter() - start


def run(args):
    import transformers

    transformers.utils.logging.disable_progress_bar()  # the student's save
    out = resultfile.result_path("cache_reuse", "cpu", args.quick, args.out_dir)
    print(f"cache reuse on {hostinfo.describe('cpu')}\n  results -> {out}")
    teacher = bert(tuple(args.teacher), "sdpa").eval()
    train, dev = dataset(args.examples, args.length), dataset(args.examples // 4, args.length, seed=1)
    times = {m: [] for m in MODES}
    with tempfile.TemporaryDirectory() as root:
        for r in range(args.repeats):
            cache = os.path.join(root, f"cache{r}")  # a fresh cache per repeat: every repeat times its build
            for k, (objective, use, offset) in enumerate(MODES):
                t = one_run(teacher, train, dev, objective, None if use == "none" else cache, 42 + offset,
                            args.epochs, args.batch_size, os.path.join(root, f"run{r}_{k}"))
                times[objective, use, offset].append(t)
                print(f"  repeat {r}: {objective} {use}{' (another seed)' if offset else ''}: {t:.2f} s")
    med = {m: statistics.median(v) for m, v in times.items()}
    rows = []
    for (objective, use, offset), t in med.items():
        base = med[objective, "none", 0]
        rows.append({"bench": "cache_reuse", "objective": objective, "cache": use, "seed": 42 + offset,
                     "teacher": "x".join(map(str, args.teacher)), "student_layers": 1, "examples": args.examples,
                     "L": args.length, "B": args.batch_size, "epochs": f"{args.epochs}+{args.epochs}",
                     "repeats": args.repeats, "wall_s": f"{t:.3f}", "speedup_vs_no_cache": f"{base / t:.2f}",
                     "status": "ok", **hostinfo.machine_info("cpu"), "timestamp": hostinfo.now()})
        print(f"  {objective:5s} {use:5s} seed {42 + offset}: {t:.2f} s, x{base / t:.2f} against no cache")
    rows = [{k: str(v) for k, v in r.items()} for r in rows]
    resultfile.append_csv(out, rows)
    return rows


def main(argv=None):
    p = harness.common_args(argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter))
    p.add_argument("--teacher", nargs=4, type=int, default=None, metavar=("LAYERS", "HIDDEN", "HEADS", "FFN"),
                   help="teacher shape (default 6 128 4 512); the student is its first layer's copy")
    p.add_argument("--examples", type=int, default=None)
    p.add_argument("--length", type=int, default=None, help="longest example (lengths are uniform in [L/2, L])")
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--epochs", type=int, default=None, help="epochs per stage")
    p.add_argument("--repeats", type=int, default=None)
    args = p.parse_args(argv)
    if args.device != "cpu":
        raise SystemExit("benchmark_cache_reuse.py measures the CPU path (--device cpu)")
    harness.setup(args)
    quick = args.quick
    args.teacher = args.teacher or [6, 64 if quick else 128, 4, 128 if quick else 512]
    args.examples = args.examples or (64 if quick else 1024)
    args.length = args.length or (16 if quick else 64)
    args.epochs = args.epochs or (1 if quick else 2)
    args.repeats = args.repeats or (1 if quick else 3)
    return resultfile.exit_status(run(args))


if __name__ == "__main__":
    sys.exit(main())
