"""Benchmark mlkd_fast.sample_contrastive (L_SC, two-view supervised contrastive loss) on every available backend.

    python benchmarks/benchmark_sample_contrastive.py            # default sweep
    python benchmarks/benchmark_sample_contrastive.py --quick    # seconds (CI)

Inputs: teacher [CLS] (B, 768) and projected student [CLS] (B, 768), so the
anchor matrix is 2B x 2B. Groups: B (3-class labels, as MNLI; peak memory),
regression (labels=None, as STS-B), dtype (B=1024). tau = 0.07, base 1.0.
"""
from __future__ import annotations

import os
import sys

import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import harness  # noqa: E402

import mlkd_fast  # noqa: E402
from mlkd_fast.ops import reference  # noqa: E402

TAU, BASE_TAU = 0.07, 1.0


def build_inputs(p, device, seed):
    g = torch.Generator().manual_seed(seed)
    dtype = harness.DTYPES[p["dtype"]]
    t = torch.randn(p["B"], p["D"], generator=g).to(device=device, dtype=dtype)
    s = torch.randn(p["B"], p["D"], generator=g).to(device=device, dtype=dtype).requires_grad_(True)
    labels = torch.randint(0, p["classes"], (p["B"],), generator=g).to(device) if p["classes"] > 0 else None
    return {"teacher": t, "student": s, "labels": labels}


def call(x, backend):
    return mlkd_fast.sample_contrastive(
        x["teacher"], x["student"], x["labels"], temperature=TAU, base_temperature=BASE_TAU, backend=backend
    )


def reference_call(x):
    return reference.sample_contrastive(x["teacher"], x["student"], x["labels"], TAU, BASE_TAU)


BENCHMARK = harness.OpBenchmark(
    op="sample_contrastive",
    build_inputs=build_inputs,
    call=call,
    reference=reference_call,
    grad_names=("student",),
    script=os.path.abspath(__file__),
    compile_groups=("B",),
)


def shape(B, classes=3, dtype="fp32", D=768):
    return {"B": B, "D": D, "classes": classes, "dtype": dtype}


def cases(device: str, quick: bool):
    C = harness.OpCase
    if quick:
        return [C("B", shape(B), memory=(B == 64)) for B in (16, 64)] + [C("regression", shape(16, classes=0))]
    Bs = (32, 128, 512, 1024, 2048, 4096) + ((8192, 16384) if device == "cuda" else ())
    dtypes = ("bf16", "fp64") if device == "cpu" else ("bf16", "fp16")
    out = [C("B", shape(B), memory=True) for B in Bs]
    out += [C("regression", shape(B, classes=0)) for B in (32, 1024)]
    out += [C("dtype", shape(1024, dtype=d)) for d in dtypes]
    return out


def main(argv=None):
    return harness.op_script_main(BENCHMARK, cases, __doc__, argv)


if __name__ == "__main__":
    sys.exit(main())
