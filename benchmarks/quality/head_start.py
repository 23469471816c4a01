"""How far each head start (build_student head_init: concat, scaled, grouped) puts a copied student's attention
from its teacher's, before any training: for every student head count, the mean KL(teacher || student) of
the attention maps (the teacher map of a student head: the mean of its merged heads' maps) and the relative
error of the heads' context that W^O reads, over the mapped layers and the real tokens of dev batches:
"re-split alone" on the teacher's own layer inputs (head_init.resplit_gap: what the start changes), and "in
the student" on the student's own inputs (head_init.attention_gap: that plus the drift of skipping layers).

    python benchmarks/quality/head_start.py --teacher runs/quality/teachers/mrpc/model --task mrpc

"grouped" compares the teacher's heads on 256 training pairs (as the quality rows do) and is measured on dev.
Appends to benchmarks/results/head_start_<machine>.csv.
"""
from __future__ import annotations

import argparse
import os
import sys

import torch

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.dirname(HERE))
import hostinfo  # noqa: E402
import resultfile  # noqa: E402

from mlkd_fast import build_student, load_for_task  # noqa: E402
from mlkd_fast.data import get_task, load_glue_split  # noqa: E402
from mlkd_fast.train.head_init import HEAD_INITS, attention_gap, resplit_gap, sample_batches  # noqa: E402
from mlkd_fast.train.layer_map import resolve_layer_map  # noqa: E402


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--teacher", required=True, help="a fine-tuned teacher directory")
    p.add_argument("--task", default="mrpc")
    p.add_argument("--glue-dir", default=os.path.join(hostinfo.REPO_DIR, "..", "shared", "data", "glue"))
    p.add_argument("--layers", type=int, default=3, help="student layers (uniform map)")
    p.add_argument("--heads", type=int, nargs="+", default=[6, 4, 3])
    p.add_argument("--dev-rows", type=int, default=128)
    p.add_argument("--max-seq-length", type=int, default=128)
    p.add_argument("--results", help="CSV (default benchmarks/results/head_start_<machine>.csv)")
    args = p.parse_args(argv)
    spec = get_task(args.task)
    train, dev = load_glue_split(spec.name, args.glue_dir, "train"), load_glue_split(spec.name, args.glue_dir, "dev")
    rows = []
    for heads in args.heads:
        for head_init in HEAD_INITS:
            teacher, tokenizer = load_for_task(args.teacher, spec.num_labels)  # fresh: "grouped" reorders it
            teacher.eval()
            common = (tokenizer, spec.num_labels, args.max_seq_length)
            sample = sample_batches(train, *common, rows=256, seed=0) if head_init == "grouped" else None
            student = build_student(teacher, args.layers, num_heads=heads, head_init=head_init, sample=sample)
            mapping = resolve_layer_map(None, teacher.config.num_hidden_layers, args.layers)
            dev_batches = sample_batches(dev, *common, rows=args.dev_rows, seed=1)
            kl, rel = attention_gap(teacher, student, dev_batches, mapping)
            iso_kl, iso_rel = resplit_gap(teacher, dev_batches, mapping, heads, head_init)
            row = dict(task=spec.name, teacher=os.path.relpath(os.path.abspath(args.teacher), hostinfo.REPO_DIR),
                       teacher_heads=teacher.config.num_attention_heads, student_heads=heads, head_init=head_init,
                       layers=args.layers, dev_rows=args.dev_rows, resplit_kl=f"{iso_kl:.4f}", resplit_rel_error=f"{iso_rel:.4f}",
                       model_kl=f"{kl:.4f}", model_mha_rel_error=f"{rel:.4f}",
                       **hostinfo.machine_info("cpu"))
            print(f"heads {heads:2d} {head_init:8s} re-split alone: KL {iso_kl:.4f} context error {iso_rel:.4f} | "
                  f"in the student: KL {kl:.4f} MHA-output error {rel:.4f}", flush=True)
            rows.append(row)
    path = args.results or os.path.join(resultfile.RESULTS_DIR, f"head_start_{hostinfo.machine_kind('cpu')}.csv")
    resultfile.append_csv(path, rows)
    return 0


if __name__ == "__main__":
    torch.set_grad_enabled(False)
    sys.exit(main())
