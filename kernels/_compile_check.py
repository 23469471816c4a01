"""Compile the kernels for an NVIDIA architecture without a GPU, and report their resources.

    python -m mlkd_fast.kernels._compile_check [--arch 90] [--dtype bf16] [--shape B L Dt Ds splits]

The Triton interpreter runs the kernels' arithmetic on any machine but never
compiles them, so it cannot see what only the compiler rejects (non-constexpr
globals, shared memory beyond the device's, register spills). This tool
drives the real launch wrappers on CPU tensors with the kernels replaced by
recorders, then compiles every recorded launch for the target with
triton.compile (ptxas ships with triton; no driver needed) and prints, per
kernel: grid, tile configuration, shared memory, registers and spill bytes
(from `ptxas -v`). Exit status 1 when a kernel needs more shared memory than
`--smem-limit` or spills where --no-spills asks for none.
It must run without TRITON_INTERPRET (the kernels are then JIT functions).
"""
from __future__ import annotations

import argparse
import os
import re
import subprocess
import sys
import tempfile

import torch

POINTER = {torch.float32: "*fp32", torch.float16: "*fp16", torch.bfloat16: "*bf16", torch.int8: "*i8",
           torch.int32: "*i32", torch.int64: "*i64"}
DTYPES = {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}


class _Recorder:
    """Stands in for a kernel: kernel[grid](...) records the launch instead of running it."""

    def __init__(self, fn, launches):
        self.fn, self.launches = fn, launches

    def __getitem__(self, grid):
        return lambda *args, **kwargs: self.launches.append((self.fn, grid, args, kwargs))


def record_launches(B, L, Dt, Ds, splits, dtype, teacher_grad=True, contrastive_n=0):
    """Launches the wrappers would make for these shapes on a GPU of compute capability >= 8."""
    from mlkd_fast.kernels import relation_kl as rk
    from mlkd_fast.kernels import sample_contrastive as sc

    launches = []
    saved = {}
    for mod, names in ((rk, ("_relation_kl_fwd", "_relation_kl_bwd")), (sc, ("_contrastive_fwd", "_contrastive_bwd"))):
        for n in names:
            saved[(mod, n)] = getattr(mod, n)
            setattr(mod, n, _Recorder(getattr(mod, n), launches))
        saved[(mod, "dot_flags")] = mod.dot_flags
        mod.dot_flags = lambda *t: (False, "tf32x3")
    try:
        t = torch.zeros(B, L, Dt, dtype=dtype)
        s = torch.zeros(B, L, Ds, dtype=dtype)
        valid = torch.ones(B, L, dtype=torch.int8)
        stats = torch.zeros(B, splits, L)
        rk.relation_kl_forward(t, s, splits, valid)
        weights, gamma = torch.ones(B, L), torch.ones(1)
        rk.relation_kl_backward(t, s, splits, valid, weights, gamma, stats, stats, stats, False)
        if teacher_grad:
            rk.relation_kl_backward(t, s, splits, valid, weights, gamma, stats, stats, stats, True)
        if contrastive_n:
            x, ids = torch.zeros(contrastive_n, Dt), torch.zeros(contrastive_n, dtype=torch.long)
            loss, stats = sc.forward(x, ids, 1 / 0.07, 0.07)
            sc.backward(x, ids, stats, torch.ones(()), 1 / 0.07, 0.07)
    finally:
        for (mod, n), v in saved.items():
            setattr(mod, n, v)
    return launches


def compile_launch(fn, grid, args, kwargs, arch: int):
    """Compile one recorded launch; returns a dict of its resources."""
    import triton
    from triton.backends.compiler import GPUTarget
    from triton.backends.nvidia.compiler import get_ptxas
    from triton.compiler import ASTSource

    values = dict(zip(fn.arg_names, args))
    values.update({k: v for k, v in kwargs.items() if k in fn.arg_names})
    signature, constants = {}, {}
    for i, name in enumerate(fn.arg_names):
        v = values[name]
        if fn.params[i].is_constexpr:
            signature[name], constants[name] = "constexpr", v
        elif isinstance(v, torch.Tensor):
            signature[name] = POINTER[v.dtype]
        elif isinstance(v, bool):
            signature[name] = "i1"
        elif isinstance(v, int):
            signature[name] = "i32"
        elif isinstance(v, float):
            signature[name] = "fp32"
        else:
            raise TypeError(f"{fn.__name__}: cannot type argument {name}={v!r}")
    options = {"num_warps": kwargs.get("num_warps", 4), "num_stages": kwargs.get("num_stages", 3)}
    kernel = triton.compile(ASTSource(fn, signature, constants), target=GPUTarget("cuda", arch, 32), options=options)
    with tempfile.TemporaryDirectory() as tmp:
        ptx = os.path.join(tmp, "k.ptx")
        with open(ptx, "w") as f:
            f.write(kernel.asm["ptx"])
        gpu = f"sm_{arch}a" if arch >= 90 else f"sm_{arch}"
        out = subprocess.run([get_ptxas(arch).path, f"--gpu-name={gpu}", "-v", ptx, "-o", os.devnull],
                             capture_output=True, text=True, check=True).stderr
    regs = re.search(r"Used (\d+) registers", out)
    spills = re.search(r"(\d+) bytes spill stores, (\d+) bytes spill loads", out)
    tiles = {k: v for k, v in constants.items() if k.isupper() and k not in ("PRECISION",)}
    return {
        "kernel": fn.__name__, "grid": tuple(grid), "warps": options["num_warps"], "tiles": tiles,
        "shared_bytes": kernel.metadata.shared,
        "registers": int(regs.group(1)) if regs else -1,
        "spill_bytes": int(spills.group(1)) + int(spills.group(2)) if spills else -1,
    }


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--arch", type=int, default=90, help="compute capability x 10 (90 = H100)")
    p.add_argument("--dtype", choices=sorted(DTYPES), default="bf16")
    p.add_argument("--shape", type=int, nargs=5, metavar=("B", "L", "Dt", "Ds", "splits"), default=(32, 512, 768, 312, 12))
    p.add_argument("--no-teacher-grad", action="store_true", help="leave out the teacher-gradient backward")
    p.add_argument("--contrastive", type=int, default=0, metavar="N", help="also the L_SC kernels with N anchors of width Dt")
    p.add_argument("--smem-limit", type=int, default=227 * 1024, help="bytes of shared memory per block (H100: 227 KiB)")
    p.add_argument("--no-spills", action="store_true", help="fail when a kernel spills registers")
    a = p.parse_args(argv)
    if os.environ.get("TRITON_INTERPRET", "0") == "1":
        raise SystemExit("unset TRITON_INTERPRET: the interpreter does not compile kernels")
    B, L, Dt, Ds, splits = a.shape
    launches = record_launches(B, L, Dt, Ds, splits, DTYPES[a.dtype], not a.no_teacher_grad, a.contrastive)
    ok = True
    for fn, grid, args, kwargs in launches:
        r = compile_launch(fn, grid, args, kwargs, a.arch)
        bad = r["shared_bytes"] > a.smem_limit or (a.no_spills and r["spill_bytes"] != 0)
        ok &= not bad
        tiles = " ".join(f"{k}={v}" for k, v in r["tiles"].items())
        print(f"{'FAIL' if bad else 'ok  '} {r['kernel']:18s} grid={r['grid']} warps={r['warps']} {tiles} "
              f"shared={r['shared_bytes']}B registers={r['registers']} spills={r['spill_bytes']}B", flush=True)
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
