"""The op-benchmark framework the benchmark_<op>.py scripts share: an op script describes its inputs and
calls (OpBenchmark) and its shapes (OpCase); run_op_main times every (shape, backend, mode) interleaved,
measures peak memory where asked, and appends the rows to the results CSV.

The pieces it stands on, one concern each: hostinfo.py (where it ran), timer.py,
peakmem.py (with mem_probe.py, the fresh process of a CPU measurement), resultfile.py (CSV, exit status).
"""
from __future__ import annotations

import argparse
import importlib.util
import os
import sys
from dataclasses import dataclass
from typing import Callable, Dict, Iterable, List, Optional, Sequence

import torch

from hostinfo import describe, machine_info, now
from peakmem import cuda_peak_growth_mb, measure_cpu_memory_subprocess
from resultfile import append_csv, error_status, exit_status, result_path
from timer import time_interleaved

COMPILE = "torch.compile"  # label of torch.compile(reference) in every table
DTYPES = {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16, "fp64": torch.float64}


def load_script(path: str):
    spec = importlib.util.spec_from_file_location("_mlkd_bench_" + os.path.basename(path)[:-3], path)
    mod = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = mod
    spec.loader.exec_module(mod)
    return mod


@dataclass
class OpCase:
    """One shape of one op: `params` are the CSV columns that describe it and what build_inputs() reads."""

    group: str
    params: Dict
    memory: bool = False  # also measure peak memory (fwd+bwd) for this case


@dataclass
class OpBenchmark:
    """What an op script gives the driver.

    build_inputs(params, device, seed) -> dict of tensors (and the names of the ones needing grad in grad_names)
    call(inputs, backend) -> 0-dim loss through the public op with backend=name
    reference(inputs) -> the same loss via mlkd_fast.ops.reference (what torch.compile compiles)
    """

    op: str
    build_inputs: Callable[[Dict, str, int], Dict[str, torch.Tensor]]
    call: Callable[[Dict, str], torch.Tensor]
    reference: Callable[..., torch.Tensor]
    grad_names: Sequence[str]
    script: str
    compile_groups: Optional[Sequence[str]] = None  # sweep groups that also time torch.compile (None: all)


def make_step(bench: OpBenchmark, inputs: Dict, backend: str, mode: str, compiled=None) -> Callable[[], torch.Tensor]:
    """One timed unit: forward (with grad-requiring inputs, as in training) or forward + backward."""
    if mode not in ("fwd", "fwd+bwd"):
        raise ValueError(f"mode must be 'fwd' or 'fwd+bwd', got {mode!r}")

    def forward():
        if backend == COMPILE:
            return compiled(inputs)
        return bench.call(inputs, backend)

    def step():
        for n in bench.grad_names:
            inputs[n].grad = None
        loss = forward()
        if mode == "fwd+bwd":
            loss.backward()
        return loss

    return step


def compile_reference(bench: OpBenchmark):
    import torch._dynamo

    torch._dynamo.reset()  # one static compile per shape; no recompile limit across a sweep
    return torch.compile(bench.reference, dynamic=False)


def default_backends(device: str, include_compile: bool) -> List[str]:
    import mlkd_fast

    names = list(mlkd_fast.available_backends())
    if device == "cpu" and "triton" in names:
        names.remove("triton")  # on CPU triton runs only in its interpreter: not a speed to report
    if device == "cuda" and "cpp" in names:
        names.remove("cpp")
    if include_compile:
        names.append(COMPILE)
    return names


def run_op_cases(
    bench: OpBenchmark,
    cases: Iterable[OpCase],
    *,
    device: str,
    backends: Sequence[str],
    modes: Sequence[str] = ("fwd", "fwd+bwd"),
    compile_groups: Optional[Sequence[str]] = None,
    warmup: int = 2,
    repeats: int = 5,
    min_time_s: float = 1.0,
    memory: bool = True,
    out_csv: str,
    log=print,
) -> List[Dict[str, str]]:
    """Time every (case, backend, mode), backends interleaved; memory where asked; append each case's rows to out_csv."""
    all_rows: List[Dict[str, str]] = []
    for case in cases:
        inputs = bench.build_inputs(case.params, device, 0)
        case_backends = [b for b in backends if b != COMPILE or compile_groups is None or case.group in compile_groups]
        compiled = None
        rows: Dict[tuple, Dict[str, str]] = {}
        for mode in modes:
            steps: Dict[str, Callable[[], object]] = {}
            failed: Dict[str, Exception] = {}
            for backend in case_backends:
                try:
                    if backend == COMPILE and compiled is None:
                        compiled = compile_reference(bench)
                    steps[backend] = make_step(bench, inputs, backend, mode, compiled)
                except Exception as e:
                    failed[backend] = e
            results = dict(failed)
            results.update(time_interleaved(steps, device, warmup=warmup, repeats=repeats, min_time_s=min_time_s))
            for backend in case_backends:
                row = {"op": bench.op, "group": case.group, "backend": backend, "mode": mode, "device": device}
                row.update({k: str(v) for k, v in case.params.items()})
                res = results[backend]
                if isinstance(res, Exception):
                    row["status"] = error_status(res)
                else:
                    row.update(res.columns())
                    row["value"] = f"{float(res.last.detach()):.6g}"
                    row["status"] = "ok"
                rows[(backend, mode)] = row
        for (backend, mode), row in rows.items():
            if mode != "fwd+bwd" or row["status"] != "ok" or not (device == "cuda" or (memory and case.memory)):
                continue
            try:
                if device == "cuda":
                    mb = cuda_peak_growth_mb(make_step(bench, inputs, backend, mode, compiled))
                else:
                    mb = measure_cpu_memory_subprocess(bench.script, case.params, backend, mode, torch.get_num_threads())
                row["peak_mem_mb"] = f"{mb:.2f}"
            except Exception as e:
                row["status"] = "ok; memory " + error_status(e)
        del compiled
        _add_ratios(rows)
        for row in rows.values():
            log(_summary(row))
        finished = [dict(r, **machine_info(device), timestamp=now()) for r in rows.values()]
        append_csv(out_csv, finished)
        all_rows.extend(finished)
    return all_rows


def _add_ratios(rows: Dict[tuple, Dict[str, str]]) -> None:
    """speedup_vs_torch = torch median / backend median; mem_ratio_vs_torch = backend peak / torch peak (same run, same shape)."""
    for (backend, mode), row in rows.items():
        ref = rows.get(("torch", mode))
        if ref is None or "median_ms" not in ref or "median_ms" not in row:
            continue
        row["speedup_vs_torch"] = f"{float(ref['median_ms']) / float(row['median_ms']):.3f}"
        if "peak_mem_mb" in row and "peak_mem_mb" in ref and float(ref["peak_mem_mb"]) > 0:
            row["mem_ratio_vs_torch"] = f"{float(row['peak_mem_mb']) / float(ref['peak_mem_mb']):.4f}"


def _summary(row: Dict[str, str]) -> str:
    shape = " ".join(f"{k}={row[k]}" for k in ("B", "L", "N", "Dt", "Ds", "D", "splits", "dtype") if k in row)
    if row["status"].startswith("ok"):
        mem = f"  peak {row['peak_mem_mb']} MiB" if "peak_mem_mb" in row else ""
        ratio = f"  x{row['speedup_vs_torch']}" if "speedup_vs_torch" in row else ""
        return f"  {row['group']:7s} {shape:50s} {row['backend']:14s} {row['mode']:8s} {row['median_ms']:>12s} ms (IQR {row['iqr_ms']}){ratio}{mem}"
    return f"  {row['group']:7s} {shape:50s} {row['backend']:14s} {row['mode']:8s} {row['status']}"


def common_args(parser: argparse.ArgumentParser) -> argparse.ArgumentParser:
    parser.add_argument("--quick", action="store_true", help="tiny sizes, few repeats, no torch.compile: a smoke run of seconds (CI)")
    parser.add_argument("--device", choices=("cpu", "cuda"), default="cpu")
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: all cores)")
    parser.add_argument("--out-dir", default=None, help="folder for the CSV (default benchmarks/results, or a temp folder with --quick)")
    return parser


def setup(args) -> None:
    if args.device == "cuda" and not torch.cuda.is_available():
        raise SystemExit("--device cuda was asked for but torch sees no CUDA device")
    if args.threads is not None:
        if args.threads < 1:
            raise SystemExit(f"--threads must be >= 1, got {args.threads}")
        torch.set_num_threads(args.threads)


def op_args(doc: str, argv=None):
    p = common_args(argparse.ArgumentParser(description=doc, formatter_class=argparse.RawDescriptionHelpFormatter))
    p.add_argument("--no-compile", action="store_true", help="leave out torch.compile of the reference")
    p.add_argument("--groups", nargs="*", default=None, help="run only these sweep groups")
    args = p.parse_args(argv)
    setup(args)
    return args


def run_op_main(bench: OpBenchmark, all_cases: Sequence[OpCase], args, compile_groups: Optional[Sequence[str]]) -> List[Dict[str, str]]:
    """The main body every op script shares: pick backends and groups, run, append to the CSV."""
    known = sorted({c.group for c in all_cases})
    if args.groups is not None and not set(args.groups) <= set(known):
        raise SystemExit(f"--groups must be among {known}, got {args.groups}")
    chosen = [c for c in all_cases if args.groups is None or c.group in args.groups]
    backends = default_backends(args.device, include_compile=not (args.quick or args.no_compile))
    out = result_path(bench.op, args.device, args.quick, args.out_dir)
    print(f"{bench.op}: backends {backends} on {describe(args.device)}")
    print(f"  results -> {out}")
    return run_op_cases(
        bench,
        chosen,
        device=args.device,
        backends=backends,
        compile_groups=compile_groups,
        warmup=1 if args.quick else 2,
        repeats=2 if args.quick else 3,
        min_time_s=0.0 if args.quick else 1.0,
        out_csv=out,
    )


def op_script_main(bench: OpBenchmark, cases: Callable[[str, bool], Sequence[OpCase]], doc: str, argv=None) -> int:
    """The whole main() of a benchmark_<op>.py script: arguments, the run, and the exit status
    (non-zero when a measurement failed; the failed rows stay in the CSV)."""
    args = op_args(doc, argv)
    rows = run_op_main(bench, cases(args.device, args.quick), args, compile_groups=bench.compile_groups)
    return exit_status(rows)
