"""End-to-end time of one MLKD training step, fused backend vs the eager reference backend.

    python benchmarks/benchmark_e2e.py            # default: both teacher/student pairs, L=128 and L=512, stages 1 and 2
    python benchmarks/benchmark_e2e.py --quick    # seconds (CI)

One step = teacher forward (no_grad, eval) capturing its features, student
forward (train mode) capturing its features, the stage loss
(mlkd_fast.train.objectives.stage_loss with stage_weights and DistillProjections),
backward, and an AdamW step over the student and the projections. Each phase
is timed separately as well (CUDA is synchronised between phases); the
reference and fused trainers take turns step by step. Pairs,
random weights (timing does not depend on them):
  minilm: teacher 6L/384/12 heads/FFN 1536 (all-MiniLM-L6-v2's shape), student 3L/384/4 heads/FFN 1536
  base:   teacher 12L/768/12 heads/FFN 3072 (BERT-base), student 4L/312/12 heads/FFN 1200 (the paper's)
Batches hold the same number of tokens at both lengths (B=16 at L=128, B=4 at
L=512), with padding (each sequence keeps a random length in [L/2, L]). The
fused backend is "cpp" on CPU and "triton" on CUDA; when it is not built the
rows say so. Peak memory: growth of resident memory (CPU; glibc's mmap
threshold pinned, see harness.py) or of max_memory_allocated (CUDA) during
the last timed step, above what the previous step left (models, optimizer state).
"""
from __future__ import annotations

import argparse
import os
import statistics
import sys
import time

import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import harness  # noqa: E402
import hostinfo  # noqa: E402
import peakmem  # noqa: E402
import resultfile  # noqa: E402
import timer  # noqa: E402

import mlkd_fast  # noqa: E402
from mlkd_fast.train.capture import capture_features  # noqa: E402
from mlkd_fast.train.layer_map import uniform_layer_map  # noqa: E402
from mlkd_fast.train.objectives import DistillProjections, LossContext, stage_loss, stage_weights  # noqa: E402

# name -> ((teacher layers, hidden, heads, FFN), (student layers, hidden, heads, FFN))
PAIRS = {
    "minilm": ((6, 384, 12, 1536), (3, 384, 4, 1536)),
    "base": ((12, 768, 12, 3072), (4, 312, 12, 1200)),
    "tiny": ((2, 96, 4, 192), (1, 48, 4, 96)),  # --quick only: exercises the code path in seconds
}
NUM_LABELS = 3
PHASES = ("teacher_fwd", "student_fwd", "loss", "backward", "optimizer")


def bert(layers, hidden, heads, ffn):
    from transformers import BertConfig, BertForSequenceClassification

    cfg = BertConfig(
        vocab_size=30522, hidden_size=hidden, num_hidden_layers=layers, num_attention_heads=heads,
        intermediate_size=ffn, max_position_embeddings=512, num_labels=NUM_LABELS,
    )
    return BertForSequenceClassification(cfg)


def make_batch(batch, length, device, seed=0):
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(1000, 30522, (batch, length), generator=g)
    ids[:, 0] = 101
    lengths = torch.randint(max(length // 2, 1), length + 1, (batch,), generator=g)
    mask = torch.arange(length)[None, :] < lengths[:, None]
    ids = ids.masked_fill(~mask, 0)
    return {
        "input_ids": ids.to(device),
        "attention_mask": mask.long().to(device),
        "token_type_ids": torch.zeros(batch, length, dtype=torch.long, device=device),
        "labels": torch.randint(0, NUM_LABELS, (batch,), generator=g).to(device),
    }


class Trainer:
    """The objects one distillation step touches, built once per (pair, backend)."""

    def __init__(self, pair, stage, backend, device, seed=0):
        torch.manual_seed(seed)
        (tl, th, tn, tf), (sl, sh, sn, sf) = PAIRS[pair]
        self.teacher = bert(tl, th, tn, tf).to(device).eval()
        self.student = bert(sl, sh, sn, sf).to(device).train()
        self.proj = DistillProjections(sh, th, sl).to(device)
        self.layer_map = uniform_layer_map(tl, sl)
        self.weights = stage_weights(stage)
        self.stage = stage
        self.backend = backend
        self.device = device
        params = list(self.student.parameters()) + list(self.proj.parameters())
        self.opt = torch.optim.AdamW(params, lr=5e-5, weight_decay=0.01)

    def step(self, batch, clock=None):
        """One training step; clock(name) is called at the end of each phase."""
        tick = clock or (lambda name: None)
        need_tokens = self.stage == 1
        with torch.no_grad():
            tf = capture_features(self.teacher, batch, mha=need_tokens, token_embeddings=need_tokens)
        tick("teacher_fwd")
        sf = capture_features(self.student, batch, mha=need_tokens, token_embeddings=need_tokens)
        tick("student_fwd")
        ctx = LossContext(
            mask=batch["attention_mask"].bool(), layer_map=self.layer_map, projections=self.proj,
            labels=batch["labels"], splits=12, backend=self.backend,
        )
        loss, _ = stage_loss(self.weights, tf, sf, ctx)
        tick("loss")
        self.opt.zero_grad(set_to_none=True)
        loss.backward()
        tick("backward")
        self.opt.step()
        tick("optimizer")
        return loss


def time_steps(trainers, batch, device, warmup, repeats, memory=False):
    """Interleaved steps of several trainers (round r steps each once).

    Returns per trainer (step times, phase times, peak memory growth of the
    last round's step in MiB or None). Interleaving puts the reference and the
    fused backend under the same machine load, so their ratio stays fair on a
    shared machine; the memory is read around a timed step (reading the
    high-water mark costs nothing), which saves a step per backend.
    """
    out = {name: ([], {p: [] for p in PHASES}, None) for name in trainers}
    for i in range(warmup + repeats):
        for name, trainer in trainers.items():
            marks = []

            def clock(phase):
                if device == "cuda":
                    torch.cuda.synchronize()
                marks.append((phase, time.perf_counter()))

            def step():
                clock("start")
                trainer.step(batch, clock)

            peak = None
            if memory and i == warmup + repeats - 1:
                peak = peakmem.cuda_peak_growth_mb(step) if device == "cuda" else peakmem.cpu_peak_growth_mb(step)
            else:
                step()
            if i < warmup:
                continue
            totals, phases, _ = out[name]
            totals.append(marks[-1][1] - marks[0][1])
            for (_, t0), (phase, t1) in zip(marks, marks[1:]):
                phases[phase].append(t1 - t0)
            if peak is not None:
                out[name] = (totals, phases, peak)
    return out


def run(args):
    device = args.device
    fused = "triton" if device == "cuda" else "cpp"
    available = mlkd_fast.available_backends()
    out = resultfile.result_path("e2e", device, args.quick, args.out_dir)
    print(f"e2e on {hostinfo.describe(device)}; backends available: {available}\n  results -> {out}")
    all_rows = []
    for pair in args.pairs:
        for length, batch_size in args.lengths:
            batch = make_batch(batch_size, length, device)
            for stage in args.stages:
                rows = {}
                trainers = {}
                for backend in ("torch", fused):
                    rows[backend] = {
                        "bench": "e2e", "pair": pair, "teacher": "{}L/{}/{}h/{}".format(*PAIRS[pair][0]),
                        "student": "{}L/{}/{}h/{}".format(*PAIRS[pair][1]), "stage": stage, "backend": backend,
                        "B": batch_size, "L": length, "device": device,
                    }
                    if backend not in available:
                        rows[backend]["status"] = f"unavailable: backend {backend!r} is not built here (available: {available})"
                        continue
                    trainers[backend] = Trainer(pair, stage, backend, device)
                memory = not args.no_memory and (device == "cuda" or peakmem.malloc_pinned())
                try:
                    timed = time_steps(trainers, batch, device, args.warmup, args.repeats, memory=memory)
                except Exception as e:  # one backend failing fails the comparison: say so in both rows
                    timed = {}
                    for backend in trainers:
                        rows[backend]["status"] = resultfile.error_status(e)
                for backend, (totals, phases, peak) in timed.items():
                    row = rows[backend]
                    t = timer.Timing(totals, first_call_s=float("nan"))
                    row.update({k: v for k, v in t.columns().items() if k != "first_call_ms"})
                    for name, xs in phases.items():
                        row[f"{name}_ms"] = f"{1e3 * statistics.median(xs):.2f}"
                    row["status"] = "ok"
                    if args.no_memory:
                        pass
                    elif device == "cpu" and not peakmem.malloc_pinned():
                        row["status"] = "ok; memory not measured: glibc's mmap threshold is not pinned (run the script itself)"
                    else:
                        row["peak_mem_mb"] = f"{peak:.1f}"
                trainers.clear()
                ref, fus = rows["torch"], rows[fused]
                if "median_ms" in ref and "median_ms" in fus:
                    fus["speedup_vs_torch"] = f"{float(ref['median_ms']) / float(fus['median_ms']):.3f}"
                    fus["loss_speedup_vs_torch"] = f"{float(ref['loss_ms']) / float(fus['loss_ms']):.3f}"
                    if "peak_mem_mb" in ref and "peak_mem_mb" in fus and float(ref["peak_mem_mb"]) > 0:
                        fus["mem_ratio_vs_torch"] = f"{float(fus['peak_mem_mb']) / float(ref['peak_mem_mb']):.3f}"
                for backend, row in rows.items():
                    if "median_ms" in row:
                        print(f"  {pair} L={length} B={batch_size} stage {stage} {backend:6s} step {float(row['median_ms']):9.1f} ms "
                              f"(IQR {row['iqr_ms']})  loss {row['loss_ms']} ms  backward {row['backward_ms']} ms  "
                              f"peak {row.get('peak_mem_mb', '-')} MiB  x{row.get('speedup_vs_torch', '1')}")
                    else:
                        print(f"  {pair} L={length} stage {stage} {backend}: {row['status']}")
                finished = [{k: str(v) for k, v in dict(r, **hostinfo.machine_info(device), timestamp=hostinfo.now()).items()}
                            for r in rows.values()]
                resultfile.append_csv(out, finished)
                all_rows.extend(finished)
    return all_rows


def parse_lengths(items):
    out = []
    for item in items:
        try:
            L, B = (int(v) for v in item.split(":"))
        except ValueError:
            raise SystemExit(f"--lengths entries must be L:B (e.g. 128:16), got {item!r}")
        out.append((L, B))
    return out


def main(argv=None):
    p = harness.common_args(argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter))
    p.add_argument("--pairs", nargs="*", default=None, choices=sorted(PAIRS), help="default: minilm base (tiny with --quick)")
    p.add_argument("--lengths", nargs="*", default=None, help="L:B pairs (default 128:16 512:4)")
    p.add_argument("--stages", nargs="*", type=int, default=[1, 2], choices=[1, 2])
    p.add_argument("--repeats", type=int, default=None)
    p.add_argument("--no-memory", action="store_true", help="skip the peak-memory step")
    args = p.parse_args(argv)
    harness.setup(args)
    if args.quick:
        args.pairs = args.pairs or ["tiny"]
        args.lengths = parse_lengths(args.lengths or ["32:2"])
        args.warmup, args.repeats = 1, args.repeats or 1
    else:
        args.pairs = args.pairs or ["minilm", "base"]
        args.lengths = parse_lengths(args.lengths or ["128:16", "512:4"])
        args.warmup, args.repeats = 1, args.repeats or 3
    return resultfile.exit_status(run(args))  # non-zero when a measurement failed


if __name__ == "__main__":
    if "--no-memory" not in sys.argv and "cuda" not in sys.argv and not peakmem.malloc_pinned():
        peakmem.reexec_with_pinned_malloc()  # the in-process RSS peak needs glibc's mmap threshold fixed at start
    sys.exit(main())
