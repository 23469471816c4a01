"""Benchmark mlkd_fast.relation_kl (L_EMB / L_MHA) on every available backend.

    python benchmarks/benchmark_relation_kl.py            # default sweep, CSV in benchmarks/results/
    python benchmarks/benchmark_relation_kl.py --quick    # seconds: CI smoke run, CSV in a temp folder

Backends: mlkd_fast.available_backends() (triton only on CUDA, cpp only on
CPU) plus "torch.compile" of the eager reference. Modes: "fwd" (forward with
a grad-requiring student, as in training) and "fwd+bwd". Shapes follow the
paper's BERT-base teacher / 4L-312 student: Dt=768, Ds=312, splits=12, with a
padding mask (each sequence keeps a random length in [L/2, L]).

Sweeps (groups): L (B=2), batch (L=128; B=32 is the kernel issue's headline
shape), mem (B=4, L=1024: the kernel issue's memory shape), splits, dtype.
Peak memory (fwd+bwd) is measured for the L and mem groups on CPU, for every
shape on CUDA.
"""
from __future__ import annotations

import os
import sys

import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import harness  # noqa: E402

import mlkd_fast  # noqa: E402
from mlkd_fast.ops import reference  # noqa: E402


def padding_mask(B: int, L: int, seed: int, device: str) -> torch.Tensor:
    """Each sequence keeps a random length in [L/2, L] (the first one keeps all L)."""
    g = torch.Generator().manual_seed(seed + 1)
    lengths = torch.randint(max(L // 2, 1), L + 1, (B,), generator=g)
    lengths[0] = L
    return (torch.arange(L)[None, :] < lengths[:, None]).to(device)


def build_inputs(p, device, seed):
    g = torch.Generator().manual_seed(seed)
    dtype = harness.DTYPES[p["dtype"]]
    t = torch.randn(p["B"], p["L"], p["Dt"], generator=g).to(device=device, dtype=dtype)
    s = torch.randn(p["B"], p["L"], p["Ds"], generator=g).to(device=device, dtype=dtype).requires_grad_(True)
    m = padding_mask(p["B"], p["L"], seed, device) if p["masked"] else None
    return {"teacher": t, "student": s, "mask": m, "splits": p["splits"]}


def call(x, backend):
    return mlkd_fast.relation_kl(x["teacher"], x["student"], x["splits"], x["mask"], backend=backend)


def reference_call(x):
    return reference.relation_kl(x["teacher"], x["student"], x["splits"], x["mask"])


BENCHMARK = harness.OpBenchmark(
    op="relation_kl",
    build_inputs=build_inputs,
    call=call,
    reference=reference_call,
    grad_names=("student",),
    script=os.path.abspath(__file__),
    compile_groups=("L", "mem"),
)


def shape(B, L, splits=12, dtype="fp32", Dt=768, Ds=312, masked=True):
    return {"B": B, "L": L, "Dt": Dt, "Ds": Ds, "splits": splits, "dtype": dtype, "masked": masked}


def cases(device: str, quick: bool):
    C = harness.OpCase
    if quick:
        return [C("L", shape(2, L), memory=(L == 48)) for L in (16, 48)] + [C("dtype", shape(2, 16, dtype="bf16"))]
    Ls = (64, 128, 256, 512, 1024, 2048) + ((4096, 8192) if device == "cuda" else ())
    batches = (8, 32) if device == "cpu" else (8, 32, 128)
    dtypes = ("bf16", "fp64") if device == "cpu" else ("bf16", "fp16")
    out = [C("L", shape(2, L), memory=True) for L in Ls]
    out += [C("batch", shape(B, 128)) for B in batches]
    out += [C("mem", shape(4, 1024), memory=True)]
    out += [C("splits", shape(32, 128, splits=a)) for a in (1, 4)]
    out += [C("dtype", shape(32, 128, dtype=d)) for d in dtypes]
    return out


def main(argv=None):
    return harness.op_script_main(BENCHMARK, cases, __doc__, argv)


if __name__ == "__main__":
    sys.exit(main())
