"""Data-parallel step time: one process against N gloo ranks (torchrun) on the same global batch.

A real `mlkd-fast distill` run (stage 1, then stage 2) of a random-weights teacher of the main job's shape
(6L/384/12H) into a 3-layer, 6-head student on MRPC rows, global batch 16, cpp backend. The step time is the
median gap between consecutive training-log records. On a 2-core CPU two ranks share the same cores, so this
measures the overhead of the collectives, not a speed-up; on GPUs run it with --device cuda.

    python benchmarks/benchmark_ddp.py [--ranks 2] [--rows 160] [--glue ../shared/data/glue]
"""
from __future__ import annotations

import argparse
import json
import os
import socket
import statistics
import subprocess
import sys
import tempfile

import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import hostinfo  # noqa: E402
import resultfile  # noqa: E402


def step_times(out):
    rows = [json.loads(line) for line in open(os.path.join(out, "metrics.jsonl")) if '"kind": "train"' in line]
    out = {}
    for stage in (1, 2):
        times = [r["time"] for r in rows if r["stage"] == stage]
        gaps = [b - a for a, b in zip(times, times[1:])][1:]  # the first gap holds warm-up
        out[stage] = statistics.median(gaps) * 1e3 if gaps else float("nan")
    return out


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--ranks", type=int, default=2)
    p.add_argument("--rows", type=int, default=160, help="MRPC training rows (10 steps of 16)")
    p.add_argument("--glue", default=os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "..",
                                                  "shared", "data", "glue"))
    p.add_argument("--device", default="cpu")
    p.add_argument("--out-dir", default=None)
    args = p.parse_args(argv)
    from transformers import BertConfig, BertForSequenceClassification, BertTokenizerFast

    tmp = tempfile.mkdtemp(prefix="mlkd_ddp_")
    torch.manual_seed(0)
    cfg = BertConfig(hidden_size=384, num_hidden_layers=6, num_attention_heads=12, intermediate_size=1536, num_labels=2)
    BertForSequenceClassification(cfg).save_pretrained(os.path.join(tmp, "teacher"))
    vocab = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"] + [f"w{i}" for i in range(cfg.vocab_size - 5)]
    BertTokenizerFast(vocab={w: i for i, w in enumerate(vocab)}).save_pretrained(os.path.join(tmp, "teacher"))
    common = ["distill", "--task", "mrpc", "--data-dir", args.glue, "--teacher", os.path.join(tmp, "teacher"),
              "--student-layers", "3", "--student-heads", "6", "--stage1-epochs", "1", "--stage2-epochs", "1",
              "--batch-size", "16", "--max-train-samples", str(args.rows), "--device", args.device, "--no-progress"]
    rows, threads = [], torch.get_num_threads()
    for ranks in (1, args.ranks):
        out = os.path.join(tmp, f"r{ranks}")
        env = dict(os.environ, OMP_NUM_THREADS=str(max(1, threads // ranks)), HF_HUB_OFFLINE="1",
                   TRANSFORMERS_VERBOSITY="error")
        if ranks == 1:
            cmd = [sys.executable, "-m", "mlkd_fast"]
        else:
            with socket.socket() as s:
                s.bind(("127.0.0.1", 0))
                port = s.getsockname()[1]
            cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", str(ranks), "--master_addr",
                   "127.0.0.1", "--master_port", str(port), "-m", "mlkd_fast"]
        res = subprocess.run(cmd + common + ["--output-dir", out], env=env, capture_output=True, text=True)
        row = {"bench": "ddp", "ranks": ranks, "threads_per_rank": env["OMP_NUM_THREADS"], "global_batch": 16,
               "rows": args.rows, "device": args.device}
        if res.returncode != 0:
            row["status"] = "error: " + (res.stderr.strip().splitlines() or ["?"])[-1][:200]
        else:
            t = step_times(out)
            row.update(stage1_step_ms=f"{t[1]:.1f}", stage2_step_ms=f"{t[2]:.1f}", status="ok")
        print(row, flush=True)
        rows.append(dict(row, **hostinfo.machine_info(args.device), timestamp=hostinfo.now()))
    path = resultfile.result_path("ddp", args.device, False, args.out_dir)
    resultfile.append_csv(path, rows)
    print(f"results -> {path}")
    return resultfile.exit_status(rows)


if __name__ == "__main__":
    sys.exit(main())
