"""Whole-recipe wall time: the project's way against the authors' way, interleaved on one machine.

    python benchmarks/benchmark_recipe.py            # minilm and base pairs, L=128 and L=512
    python benchmarks/benchmark_recipe.py --quick    # seconds (CI)

The project's way: sdpa attention, the fused ops ("cpp" on CPU, "triton" on CUDA), and the teacher-output
cache (train/teacher_cache.py), in fp32 ("project"), with bf16 autocast ("project-bf16": `precision:
bf16`, the cache's reads, the student's forward and the loss under autocast), and in fp32 with the student's
feed-forward blocks compiled by inductor ("project-compile": `torch.compile(dynamic=True)` of each layer's
intermediate and output blocks; the attention keeps the forward hooks that capture Q/K/V and the W^O input,
which a compiled whole model would re-trace at every step). Every way starts from the same weights and
sees the same batches, so each way's loss on the first batch, before any step and without dropout (the
ways draw dropout masks differently), against "project"'s (`first_loss_rel`) says whether the way computes
the same thing (fp32 rounding: about 1e-6; bf16 and the authors' eager terms: more). The authors' way: eager
attention, the eager reference loss terms, the teacher run at every step. Both run the library's own stage
objective (train/stage.py) with AdamW on the same synthetic training set (N examples, random lengths in
[L/2, L], random weights: timing does not depend on them), one step of each way in turn, each phase timed:
data (collation), teacher (forward, or the cache read), student forward, loss, backward, optimiser. The
cache build (the teacher over the N examples once, for the features of both stages) is timed too.

Whole recipe of E1 + E2 epochs of S steps each (S = the training set / batch):
    authors = S * (E1 * t1 + E2 * t2)
    project = build + S * (E1 * t1' + E2 * t2')
where t1, t2 are the measured median step times (with data) and build is the measured build time scaled
from N examples to the training set (built once, by "project"; "project-bf16" reads the same fp32 cache).
Reported for 3 + 3 and the paper's 20 + 15 epochs, both from the measured step and build times (an
extrapolation to the set size: say so wherever quoted).
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

import mlkd_fast  # noqa: E402
from mlkd_fast.data.batching import Collator  # noqa: E402
from mlkd_fast.train.config import DistillConfig  # noqa: E402
from mlkd_fast.train.objectives import DistillProjections  # noqa: E402
from mlkd_fast.train.precision import Precision  # noqa: E402
from mlkd_fast.train.objectives import cached_features  # noqa: E402
from mlkd_fast.train.stage import StageObjective, loss_context, plan_terms  # noqa: E402
from mlkd_fast.train.teacher_cache import open_or_build  # noqa: E402

# name -> ((teacher layers, hidden, heads, FFN), (student layers, hidden, heads, FFN)), as benchmark_e2e.py
PAIRS = {
    "minilm": ((6, 384, 12, 1536), (3, 384, 4, 1536)),
    "base": ((12, 768, 12, 3072), (4, 312, 12, 1200)),
    "tiny": ((2, 96, 4, 192), (1, 48, 4, 96)),
}
PHASES = ("data", "teacher", "student", "loss", "backward", "optimizer")
WAYS = ("authors", "project", "project-bf16", "project-compile")


def bert(shape, attn: str):
    from transformers import BertConfig, BertForSequenceClassification

    layers, hidden, heads, ffn = shape
    cfg = BertConfig(vocab_size=30522, hidden_size=hidden, num_hidden_layers=layers, num_attention_heads=heads,
                     intermediate_size=ffn, max_position_embeddings=512, num_labels=2)
    cfg._attn_implementation = attn
    return BertForSequenceClassification(cfg)


def dataset(n: int, length: int, seed: int = 0):
    import datasets

    g = torch.Generator().manual_seed(seed)
    lengths = torch.randint(max(length // 2, 2), length + 1, (n,), generator=g).tolist()
    ids = [[101] + torch.randint(1000, 30522, (k - 1,), generator=g).tolist() for k in lengths]
    return datasets.Dataset.from_dict({"input_ids": ids, "attention_mask": [[1] * k for k in lengths],
                                       "token_type_ids": [[0] * k for k in lengths],
                                       "labels": torch.randint(0, 2, (n,), generator=g).tolist()})


class Way:
    """One way of running the recipe: models, projections, optimiser, the two stage objectives."""

    def __init__(self, way: str, pair: str, train, device: str, cache_root: str):
        torch.manual_seed(0)
        attn = "eager" if way == "authors" else "sdpa"
        self.teacher = bert(PAIRS[pair][0], attn).to(device).eval()
        self.student = bert(PAIRS[pair][1], attn).to(device).train()
        self.device, self.collate = device, Collator(0)
        cfg = DistillConfig(splits=12, device=device)
        plan, settings = plan_terms(self.teacher, self.student, cfg, (1, 2))
        proj = DistillProjections(self.student.config.hidden_size, self.teacher.config.hidden_size, len(plan.layer_map)).to(device)
        backend = "torch" if way == "authors" else ("triton" if device == "cuda" else "cpp")
        context = loss_context(cfg, proj, plan, False, backend)
        self.build_s, cache = 0.0, None
        self.amp = Precision("bf16" if way.endswith("bf16") else "fp32", torch.device(device))
        if way != "authors":
            names = {n for s in (1, 2) for n in cached_features(cfg.weights(s), settings, plan)}
            start = time.perf_counter()
            cache = open_or_build(cache_root, self.teacher, train, names, depends_on={"pair": pair}, batch_size=32,
                                  collate=self.collate, device=device, log=lambda *_: None)
            self.build_s = time.perf_counter() - start
        self.objectives = {s: StageObjective(s, cfg, context, settings, cache) for s in (1, 2)}
        if way.endswith("compile"):
            for layer in self.student.bert.encoder.layer:
                layer.intermediate.compile(dynamic=True)
                layer.output.compile(dynamic=True)
        self.opt = torch.optim.AdamW(list(self.student.parameters()) + list(proj.parameters()), lr=5e-5)

    def probe(self, stage: int, rows) -> float:
        """The stage's loss on `rows` with the student in eval mode (no dropout), no step taken."""
        batch = {k: v.to(self.device) for k, v in self.collate(rows).items()}
        self.student.eval()
        with torch.no_grad(), self.amp.autocast():
            loss = self.objectives[stage](self.teacher, self.student, batch)[0].item()
        self.student.train()
        return loss

    def step(self, stage: int, rows, clock) -> None:
        batch = {k: v.to(self.device) for k, v in self.collate(rows).items()}
        clock("data")
        with self.amp.autocast():
            loss, _, _ = self.objectives[stage](self.teacher, self.student, batch, clock=clock)
        self.opt.zero_grad(set_to_none=True)
        loss.backward()
        clock("backward")
        self.opt.step()
        clock("optimizer")


def measure(ways, train, batch_size: int, stage: int, steps: int, device: str):
    """Per way: the phase times (lists) of `steps` interleaved steps after one warm-up step each."""
    out = {w: {p: [] for p in PHASES} for w in ways}
    order = list(range(len(train)))
    for i in range(steps + 1):
        idx = [order[(i * batch_size + j) % len(order)] for j in range(batch_size)]
        rows = [{"index": k, **train[k]} for k in idx]
        for name, way in ways.items():
            marks = [("start", time.perf_counter())]

            def clock(phase):
                if device == "cuda":
                    torch.cuda.synchronize()
                marks.append((phase, time.perf_counter()))

            way.step(stage, rows, clock)
            if i == 0:
                continue  # warm-up
            for (_, t0), (phase, t1) in zip(marks, marks[1:]):
                out[name][phase].append(t1 - t0)
    return out


def recipe_rows(pair, length, batch_size, n, set_size, per_stage, build_s, first, device):
    """The CSV rows of one (pair, L): per way and stage the phase medians and first loss, then the whole-recipe
    times."""
    rows, step_s = [], {}
    for way in WAYS:
        for stage in (1, 2):
            med = {p: statistics.median(per_stage[stage][way][p]) for p in PHASES}
            step_s[way, stage] = sum(med.values())
            rows.append({"bench": "recipe", "kind": "step", "pair": pair, "L": length, "B": batch_size, "way": way,
                         "stage": stage, **{f"{p}_ms": f"{1e3 * v:.4f}" for p, v in med.items()},
                         "step_ms": f"{1e3 * step_s[way, stage]:.4f}", "first_loss": f"{first[way][stage]:.8g}",
                         "first_loss_rel": f"{abs(first[way][stage] / first['project'][stage] - 1):.2e}",
                         "device": device, "status": "ok"})
    steps = -(-set_size // batch_size)
    build = build_s * set_size / n
    for way in WAYS[1:]:
        for e1, e2 in ((3, 3), (20, 15)):
            authors = steps * (e1 * step_s["authors", 1] + e2 * step_s["authors", 2])
            project = build + steps * (e1 * step_s[way, 1] + e2 * step_s[way, 2])
            rows.append({"bench": "recipe", "kind": "recipe", "pair": pair, "L": length, "B": batch_size, "way": way,
                         "epochs": f"{e1}+{e2}", "set_size": set_size, "authors_s": f"{authors:.1f}",
                         "project_s": f"{project:.1f}", "cache_build_s": f"{build:.1f}",
                         "speedup": f"{authors / project:.2f}", "device": device, "status": "ok",
                         "note": "extrapolated from measured step and build times"})
    return rows


def run(args):
    device = args.device
    out = resultfile.result_path("recipe", device, args.quick, args.out_dir)
    print(f"recipe on {hostinfo.describe(device)}; backends {mlkd_fast.available_backends()}\n  results -> {out}")
    all_rows = []
    for pair in args.pairs:
        for length, batch_size in args.lengths:
            train = dataset(args.examples, length)
            with tempfile.TemporaryDirectory() as root:
                ways = {w: Way(w, pair, train, device, root) for w in WAYS}
                rows = [{"index": k, **train[k]} for k in range(batch_size)]
                first = {w: {s: way.probe(s, rows) for s in (1, 2)} for w, way in ways.items()}
                per_stage = {s: measure(ways, train, batch_size, s, args.steps, device) for s in (1, 2)}
                rows = recipe_rows(pair, length, batch_size, args.examples, args.set_size, per_stage,
                                   ways["project"].build_s, first, device)
            for r in rows:
                if r["kind"] == "step":
                    print(f"  {pair} L={length} {r['way']:8s} stage {r['stage']}: step {r['step_ms']} ms "
                          + " ".join(f"{p} {r[p + '_ms']}" for p in PHASES) + f" (first loss vs project: "
                          f"{r['first_loss_rel']})")
                else:
                    print(f"  {pair} L={length} {r['epochs']} epochs of {r['set_size']} examples: authors "
                          f"{r['authors_s']} s, {r['way']} {r['project_s']} s (cache build {r['cache_build_s']} s): "
                          f"x{r['speedup']}")
            finished = [{k: str(v) for k, v in dict(r, **hostinfo.machine_info(device), timestamp=hostinfo.now()).items()}
                        for r in rows]
            resultfile.append_csv(out, finished)
            all_rows += finished
    return all_rows


def main(argv=None):
    p = harness.common_args(argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter))
    p.add_argument("--pairs", nargs="*", default=None, choices=sorted(PAIRS))
    p.add_argument("--lengths", nargs="*", default=None, help="L:B pairs (default 128:32 512:8)")
    p.add_argument("--examples", type=int, default=None, help="synthetic examples cached and stepped over")
    p.add_argument("--steps", type=int, default=None, help="timed steps per stage and way")
    p.add_argument("--set-size", type=int, default=3668, help="training-set size of the extrapolation (MRPC: 3668)")
    args = p.parse_args(argv)
    harness.setup(args)
    quick = args.quick
    args.pairs = args.pairs or (["tiny"] if quick else ["minilm", "base"])
    args.lengths = [tuple(int(v) for v in x.split(":")) for x in (args.lengths or (["32:4"] if quick else ["128:32", "512:8"]))]
    args.examples = args.examples or (16 if quick else 128)
    args.steps = args.steps or (2 if quick else 5)
    return resultfile.exit_status(run(args))


if __name__ == "__main__":
    sys.exit(main())
