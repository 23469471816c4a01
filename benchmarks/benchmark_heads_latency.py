"""Inference latency and throughput of students that differ only in their number of attention heads.

    python benchmarks/benchmark_heads_latency.py            # default: CPU, L=128, batch 1/8/32
    python benchmarks/benchmark_heads_latency.py --quick    # seconds (CI)

MLKD's L_MHA lets the student have any head count (docs/method.md); the paper
claims fewer heads cut inference time. This measures it: for each student
shape, one set of random weights is loaded into BertForSequenceClassification
models with 12, 6, 4, 3, 2 and 1 heads (the Q/K/V/O matrices are the same
D x D matrices, only cut into a different number of heads), so the models
differ in nothing else. Eval mode, torch.no_grad(), full-length sequences,
both the "eager" and the "sdpa" attention implementations of transformers.
Rows carry latency (median, IQR), throughput (sequences/s) and the speed-up
over the same model with 12 heads.
"""
from __future__ import annotations

import argparse
import os
import sys

import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import harness  # noqa: E402
import hostinfo  # noqa: E402
import resultfile  # noqa: E402
import timer  # noqa: E402

HEADS = (12, 6, 4, 3, 2, 1)
# name -> (layers, hidden, FFN): the paper's 4-layer student and an all-MiniLM-L6-v2-shaped one
SHAPES = {"4L-312": (4, 312, 1200), "6L-384": (6, 384, 1536), "3L-384": (3, 384, 1536)}  # 3L-384: the quality students


def build_model(layers: int, hidden: int, ffn: int, heads: int, attn: str, state=None):
    from transformers import BertConfig, BertForSequenceClassification

    cfg = BertConfig(
        vocab_size=30522,
        hidden_size=hidden,
        num_hidden_layers=layers,
        num_attention_heads=heads,
        intermediate_size=ffn,
        max_position_embeddings=512,
        num_labels=2,
    )
    cfg._attn_implementation = attn
    model = BertForSequenceClassification(cfg)
    if state is not None:
        model.load_state_dict(state, strict=True)
    return model.eval()


def make_batch(batch: int, length: int, device: str, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(1000, 30522, (batch, length), generator=g)
    ids[:, 0] = 101  # [CLS]
    return {
        "input_ids": ids.to(device),
        "attention_mask": torch.ones(batch, length, dtype=torch.long, device=device),
        "token_type_ids": torch.zeros(batch, length, dtype=torch.long, device=device),
    }


def run(args) -> list:
    device = args.device
    out = resultfile.result_path("heads_latency", device, args.quick, args.out_dir)
    print(f"heads_latency on {hostinfo.describe(device)}\n  results -> {out}")
    rows_all = []
    for shape in args.shapes:
        layers, hidden, ffn = SHAPES[shape]
        torch.manual_seed(0)
        state = build_model(layers, hidden, ffn, 12, "eager").state_dict()
        for attn in args.attn:
            models = {h: build_model(layers, hidden, ffn, h, attn, state).to(device) for h in args.heads}
            rows = []
            for batch in args.batch:
                x = make_batch(batch, args.length, device)

                def infer(model):
                    def f():
                        with torch.no_grad():
                            return model(**x).logits

                    return f

                # the head counts take turns, so a change of machine load hits them all alike
                results = timer.time_interleaved(
                    {h: infer(m) for h, m in models.items()}, device,
                    warmup=args.warmup, repeats=args.repeats, min_time_s=args.min_time,
                )
                for heads, res in results.items():
                    row = {
                        "bench": "heads_latency", "model": shape, "layers": layers, "hidden": hidden, "ffn": ffn,
                        "heads": heads, "head_dim": hidden // heads, "attn": attn, "batch": batch, "L": args.length,
                        "device": device, "params": sum(p.numel() for p in models[heads].parameters()),
                    }
                    if isinstance(res, Exception):
                        row["status"] = resultfile.error_status(res)
                    else:
                        row.update(res.columns())
                        row["seq_per_s"] = f"{batch / (res.median_ms / 1e3):.2f}"
                        row["status"] = "ok"
                    rows.append({k: str(v) for k, v in row.items()})
            del models
            # speed-up over the 12-head model of the same shape, attention implementation and batch, same run
            base = {r["batch"]: float(r["median_ms"]) for r in rows if r["heads"] == "12" and "median_ms" in r}
            for r in rows:
                if "median_ms" in r and r["batch"] in base:
                    r["speedup_vs_12heads"] = f"{base[r['batch']] / float(r['median_ms']):.3f}"
                if r["status"] == "ok":
                    print(f"  {shape} {attn:5s} heads={r['heads']:>2s} batch={r['batch']:>3s}  {float(r['median_ms']):10.3f} ms "
                          f"(IQR {float(r['iqr_ms']):.3f})  {r['seq_per_s']:>10s} seq/s  x{r.get('speedup_vs_12heads', '-')}")
                else:
                    print(f"  {shape} {attn} heads={r['heads']} batch={r['batch']}: {r['status']}")
            finished = [dict(r, **hostinfo.machine_info(device), timestamp=hostinfo.now()) for r in rows]
            resultfile.append_csv(out, finished)
            rows_all.extend(finished)
    return rows_all


def main(argv=None):
    p = harness.common_args(argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter))
    p.add_argument("--shapes", nargs="*", default=None, choices=sorted(SHAPES), help="student shapes (default: all)")
    p.add_argument("--heads", nargs="*", type=int, default=list(HEADS))
    p.add_argument("--batch", nargs="*", type=int, default=None, help="batch sizes (default 1 8 32 on CPU, 1 8 32 128 on CUDA)")
    p.add_argument("--length", type=int, default=128)
    p.add_argument("--attn", nargs="*", default=["eager", "sdpa"], choices=["eager", "sdpa"])
    args = p.parse_args(argv)
    harness.setup(args)
    for h in args.heads:
        for s in args.shapes or SHAPES:
            if SHAPES[s][1] % h:
                raise SystemExit(f"--heads {h} does not divide the hidden size {SHAPES[s][1]} of {s}")
    if args.quick:
        args.shapes = args.shapes or ["4L-312"]
        args.heads, args.batch, args.length, args.attn = [12, 3], args.batch or [2], 16, ["sdpa"]
        args.warmup, args.repeats, args.min_time = 1, 2, 0.0
    else:
        args.shapes = args.shapes or list(SHAPES)
        args.batch = args.batch or ([1, 8, 32] if args.device == "cpu" else [1, 8, 32, 128])
        args.warmup, args.repeats, args.min_time = 2, 5, 1.0
    return resultfile.exit_status(run(args))  # non-zero when a measurement failed


if __name__ == "__main__":
    sys.exit(main())
