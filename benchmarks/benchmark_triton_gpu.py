"""GPU benchmark of the fused Triton kernels against the eager reference and torch.compile of it.

    python benchmarks/benchmark_triton_gpu.py            # full sweep on the CUDA device (run by gpu_suite.sh)
    python benchmarks/benchmark_triton_gpu.py --quick    # a smoke run of a minute
    python benchmarks/benchmark_triton_gpu.py --smoke-cpu  # checks this script without a GPU (interpreter, tiny)

relation_kl (L_MHA shape: BERT-base teacher Dt=768, 4L-312 student Ds=312,
splits=12, padding mask): B=32, L = 128 ... 8192, bf16 and fp32, backends
"triton", "torch" (eager reference) and "torch.compile" (of the reference),
modes "fwd" and "fwd+bwd", peak CUDA memory of fwd+bwd. Once a baseline runs
out of memory at some L it is not tried at larger L of the same dtype (the row
says so). Plus sample_contrastive (L_SC, D=768) over batch sizes.

Writes benchmarks/results/triton_gpu_<machine>.csv (one row per measurement,
with machine, versions and commit) and triton_gpu_<machine>_summary.md: the
headline targets of the kernel issue, measured in this run, at B=32, L=512,
bf16, fwd+bwd: >= 10x faster than eager, >= 3x faster than torch.compile, and
L=8192 running where eager runs out of memory.
"""
from __future__ import annotations

import argparse
import gc
import os
import sys
import tempfile
from typing import Dict, List

import torch

BENCH_DIR = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, BENCH_DIR)
import harness  # noqa: E402
import hostinfo  # noqa: E402
import peakmem  # noqa: E402
import resultfile  # noqa: E402
import timer  # noqa: E402

RELATION = harness.load_script(os.path.join(BENCH_DIR, "benchmark_relation_kl.py")).BENCHMARK
CONTRASTIVE = harness.load_script(os.path.join(BENCH_DIR, "benchmark_sample_contrastive.py")).BENCHMARK
BACKENDS = ("triton", "torch", harness.COMPILE)
MODES = ("fwd", "fwd+bwd")
HEADLINE = {"B": 32, "L": 512, "dtype": "bf16"}
TARGET_EAGER, TARGET_COMPILE = 10.0, 3.0


def relation_shape(B, L, dtype):
    return {"B": B, "L": L, "Dt": 768, "Ds": 312, "splits": 12, "dtype": dtype, "masked": True}


def contrastive_shape(B, dtype):
    return {"B": B, "D": 768, "classes": 3, "dtype": dtype}


def plan(quick: bool, smoke_cpu: bool):
    """(benchmark, group, params) in run order."""
    if smoke_cpu:
        return [(RELATION, "L", relation_shape(2, 16, "fp32")), (CONTRASTIVE, "B", contrastive_shape(4, "fp32"))]
    Ls = (128, 512, 2048) if quick else (128, 256, 512, 1024, 2048, 4096, 8192)
    out = [(RELATION, "L", relation_shape(32, L, dt)) for dt in ("bf16", "fp32") for L in Ls]
    out += [(CONTRASTIVE, "B", contrastive_shape(B, "fp32")) for B in ((64, 1024) if quick else (64, 256, 1024, 4096))]
    return out


def is_oom(e: BaseException) -> bool:
    return isinstance(e, torch.OutOfMemoryError) or "out of memory" in str(e).lower()


def measure(bench, params, backend, device, compiled, args) -> List[Dict[str, str]]:
    """Both modes of one backend on one shape; a failure (e.g. OOM) is recorded in the row's status."""
    rows = []
    inputs = bench.build_inputs(params, device, 0)
    for mode in MODES:
        row = {"op": bench.op, "backend": backend, "mode": mode, "device": device}
        row.update({k: str(v) for k, v in params.items()})
        try:
            step = harness.make_step(bench, inputs, backend, mode, compiled)
            t = timer.time_callable(step, device, warmup=args.warmup, repeats=args.repeats, min_time_s=args.min_time)
            row.update(t.columns())
            row["value"] = f"{float(t.last.detach()):.6g}"
            row["status"] = "ok"
            if mode == "fwd+bwd" and device == "cuda":
                row["peak_mem_mb"] = f"{peakmem.cuda_peak_growth_mb(step):.2f}"
        except Exception as e:  # recorded, not hidden: the row says why there is no number
            row["status"] = ("oom: " if is_oom(e) else "error: ") + f"{type(e).__name__}: {str(e).splitlines()[0][:160] if str(e) else ''}"
        rows.append(row)
        print(summary_line(row), flush=True)
        if row["status"] != "ok":
            break  # fwd failed: fwd+bwd would too
    del inputs
    gc.collect()
    if device == "cuda":
        torch.cuda.empty_cache()
    return rows


def summary_line(row) -> str:
    shape = " ".join(f"{k}={row[k]}" for k in ("B", "L", "D", "dtype") if k in row)
    what = f"{row['median_ms']:>10s} ms" if row["status"] == "ok" else row["status"]
    mem = f"  peak {row['peak_mem_mb']} MiB" if "peak_mem_mb" in row else ""
    return f"  {row['op']:18s} {shape:28s} {row['backend']:14s} {row['mode']:8s} {what}{mem}"


def add_speedups(rows: List[Dict[str, str]]) -> None:
    """speedup_vs_torch / speedup_vs_compile of every row against the same shape and mode in this run."""
    def key(r):
        return tuple(r.get(k) for k in ("op", "B", "L", "D", "dtype", "mode"))

    by = {(key(r), r["backend"]): r for r in rows if r["status"] == "ok"}
    for r in rows:
        if r["status"] != "ok":
            continue
        for base, col in (("torch", "speedup_vs_torch"), (harness.COMPILE, "speedup_vs_compile")):
            ref = by.get((key(r), base))
            if ref is not None:
                r[col] = f"{float(ref['median_ms']) / float(r['median_ms']):.3f}"


def headline(rows: List[Dict[str, str]], device: str) -> str:
    """The kernel issue's targets, each with the numbers of this run (or why there are none)."""
    def find(backend, mode, **shape):
        for r in rows:
            if r["op"] == "relation_kl" and r["backend"] == backend and r["mode"] == mode and all(
                r.get(k) == str(v) for k, v in shape.items()
            ):
                return r
        return None

    lines = [f"# Triton relation kernels on {hostinfo.describe(device)}", ""]
    fused = find("triton", "fwd+bwd", **HEADLINE)
    shape = "B=32, L=512, Dt=768, Ds=312, splits=12, bf16, padding mask, fwd+bwd"
    if fused is None or fused["status"] != "ok":
        lines.append(f"- {shape}: fused kernel has no measurement ({fused['status'] if fused else 'not run'})")
    else:
        lines.append(f"- {shape}: fused {float(fused['median_ms']):.3f} ms, peak {fused.get('peak_mem_mb', '?')} MiB")
        for backend, target in (("torch", TARGET_EAGER), (harness.COMPILE, TARGET_COMPILE)):
            base = find(backend, "fwd+bwd", **HEADLINE)
            if base is None or base["status"] != "ok":
                lines.append(f"  - vs {backend}: no measurement ({base['status'] if base else 'not run'})")
                continue
            ratio = float(base["median_ms"]) / float(fused["median_ms"])
            verdict = "met" if ratio >= target else "NOT met"
            lines.append(
                f"  - vs {backend}: {float(base['median_ms']):.3f} ms, fused is {ratio:.2f}x faster "
                f"(target >= {target:g}x: {verdict}); peak {base.get('peak_mem_mb', '?')} MiB"
            )
    for dtype in ("bf16", "fp32"):
        big = find("triton", "fwd+bwd", B=32, L=8192, dtype=dtype)
        eager = find("torch", "fwd", B=32, L=8192, dtype=dtype) or find("torch", "fwd+bwd", B=32, L=8192, dtype=dtype)
        if big is None:
            continue
        state = f"{float(big['median_ms']):.2f} ms, peak {big.get('peak_mem_mb', '?')} MiB" if big["status"] == "ok" else big["status"]
        lines.append(f"- B=32, L=8192, {dtype}, fwd+bwd: fused {state}; eager: {eager['status'] if eager else 'not run'}")
    return "\n".join(lines) + "\n"


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--quick", action="store_true", help="fewer shapes and repeats")
    p.add_argument("--smoke-cpu", action="store_true",
                   help="no GPU: tiny shapes on CPU tensors, triton in its interpreter, results in a temp folder")
    p.add_argument("--no-compile", action="store_true", help="leave out torch.compile of the reference")
    p.add_argument("--out-dir", default=None, help="folder for the results (default benchmarks/results)")
    args = p.parse_args(argv)
    if args.smoke_cpu:
        os.environ["TRITON_INTERPRET"] = "1"  # before mlkd_fast.kernels is imported
        device = "cpu"
        args.warmup, args.repeats, args.min_time = 1, 1, 0.0
        args.out_dir = args.out_dir or os.path.join(tempfile.gettempdir(), "mlkd_fast_triton_gpu_smoke")
    else:
        if not torch.cuda.is_available():
            raise SystemExit("this benchmark needs a CUDA device (torch sees none); use --smoke-cpu to check the script")
        device = "cuda"
        args.warmup, args.repeats, args.min_time = (2, 5, 0.2) if args.quick else (3, 10, 0.5)
    import mlkd_fast

    if "triton" not in mlkd_fast.available_backends():
        raise SystemExit(f"the triton backend is not available here (backends: {mlkd_fast.available_backends()})")
    backends = [b for b in BACKENDS if not (args.no_compile and b == harness.COMPILE)]
    folder = args.out_dir or resultfile.RESULTS_DIR
    stem = os.path.join(folder, f"triton_gpu_{hostinfo.machine_kind(device)}")
    print(f"triton GPU benchmark on {hostinfo.describe(device)}\n  results -> {stem}.csv, {stem}_summary.md", flush=True)

    all_rows: List[Dict[str, str]] = []
    failed_at: Dict[tuple, str] = {}  # (op, dtype, backend) -> the shape where it ran out of memory
    for bench, group, params in plan(args.quick, args.smoke_cpu):
        case_rows: List[Dict[str, str]] = []
        for backend in backends:
            k = (bench.op, params["dtype"], backend)
            if k in failed_at:
                row = {"op": bench.op, "backend": backend, "mode": "fwd", "device": device, **{a: str(b) for a, b in params.items()},
                       "status": f"oom: skipped, already out of memory at {failed_at[k]}"}
                case_rows.append(row)
                print(summary_line(row), flush=True)
                continue
            compiled = harness.compile_reference(bench) if backend == harness.COMPILE else None
            rows = measure(bench, params, backend, device, compiled, args)
            del compiled
            if any(r["status"].startswith("oom") for r in rows):
                failed_at[k] = " ".join(f"{a}={params[a]}" for a in ("B", "L") if a in params)
            case_rows.extend(rows)
        for r in case_rows:
            r["group"] = group
        add_speedups(case_rows)
        finished = [dict(r, **hostinfo.machine_info(device), timestamp=hostinfo.now()) for r in case_rows]
        resultfile.append_csv(stem + ".csv", finished)
        all_rows.extend(finished)

    text = headline(all_rows, device)
    os.makedirs(folder, exist_ok=True)
    with open(stem + "_summary.md", "w") as f:
        f.write(text)
    print("\n" + text)
    # running out of memory is a result here (eager at L = 8192 is the point), any other failure is not
    return resultfile.exit_status(all_rows, allowed=("ok", "oom"))


if __name__ == "__main__":
    sys.exit(main())
