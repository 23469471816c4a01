"""Benchmark mlkd_fast.sample_relation_kl (L_SS, the B x B [CLS] relation) on every available backend.

    python benchmarks/benchmark_sample_relation_kl.py            # default sweep
    python benchmarks/benchmark_sample_relation_kl.py --quick    # seconds (CI)

The relation is over the batch, so the swept length is B (the global batch
when sample relations span data-parallel ranks): teacher (B, 768) vs student
(B, 312) [CLS] vectors. Groups: B (with peak memory), dtype (B=1024).
"""
from __future__ import annotations

import os
import sys

import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import harness  # noqa: E402

import mlkd_fast  # noqa: E402
from mlkd_fast.ops import reference  # noqa: E402


def build_inputs(p, device, seed):
    g = torch.Generator().manual_seed(seed)
    dtype = harness.DTYPES[p["dtype"]]
    t = torch.randn(p["B"], p["Dt"], generator=g).to(device=device, dtype=dtype)
    s = torch.randn(p["B"], p["Ds"], generator=g).to(device=device, dtype=dtype).requires_grad_(True)
    return {"teacher": t, "student": s}


def call(x, backend):
    return mlkd_fast.sample_relation_kl(x["teacher"], x["student"], backend=backend)


def reference_call(x):
    return reference.sample_relation_kl(x["teacher"], x["student"])


BENCHMARK = harness.OpBenchmark(
    op="sample_relation_kl",
    build_inputs=build_inputs,
    call=call,
    reference=reference_call,
    grad_names=("student",),
    script=os.path.abspath(__file__),
    compile_groups=("B",),
)


def shape(B, dtype="fp32", Dt=768, Ds=312):
    return {"B": B, "Dt": Dt, "Ds": Ds, "dtype": dtype}


def cases(device: str, quick: bool):
    C = harness.OpCase
    if quick:
        return [C("B", shape(B), memory=(B == 64)) for B in (16, 64)] + [C("dtype", shape(16, dtype="bf16"))]
    Bs = (32, 128, 512, 1024, 2048, 4096) + ((8192, 16384) if device == "cuda" else ())
    dtypes = ("bf16", "fp64") if device == "cpu" else ("bf16", "fp16")
    return [C("B", shape(B), memory=True) for B in Bs] + [C("dtype", shape(1024, dtype=d)) for d in dtypes]


def main(argv=None):
    return harness.op_script_main(BENCHMARK, cases, __doc__, argv)


if __name__ == "__main__":
    sys.exit(main())
