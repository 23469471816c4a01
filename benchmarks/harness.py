"""Shared benchmark machinery: timing, peak memory, machine description, CSV output.

Timing: warm-up calls (the first one is reported separately: it includes
torch.compile's compilation and lazy initialisation), then at least `repeats`
timed calls (more while the total stays under `min_time_s`), summarised as the
median and the inter-quartile range. CUDA work is synchronised before every
clock read.

Peak memory:
- CPU: a fresh Python process per (backend, shape) builds the inputs, makes one
  warm-up call, reads its resident set size (VmRSS), resets the kernel's
  high-water mark (writing "5" to /proc/self/clear_refs), makes one measured
  call and reports VmHWM - VmRSS: the growth of resident memory above the
  inputs. glibc's dynamic mmap threshold is pinned (MALLOC_MMAP_THRESHOLD_) so
  that large tensors freed by the warm-up go back to the OS instead of staying
  in the heap and hiding the measured call's allocations.
- CUDA: in-process, torch.cuda.max_memory_allocated() after
  reset_peak_memory_stats(), minus what was allocated before the call.

Run as a script, this module is that fresh process (`mem-probe`); users never
call it directly.
"""
from __future__ import annotations

import argparse
import csv
import datetime as _dt
import functools
import gc
import importlib.util
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from typing import Callable, Dict, Iterable, List, Optional, Sequence

import torch

BENCH_DIR = os.path.dirname(os.path.abspath(__file__))
REPO_DIR = os.path.dirname(BENCH_DIR)
RESULTS_DIR = os.path.join(BENCH_DIR, "results")
QUICK_DIR = os.path.join(tempfile.gettempdir(), "mlkd_fast_bench_quick")
COMPILE = "torch.compile"  # label of torch.compile(reference) in every table
DTYPES = {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16, "fp64": torch.float64}


# ----------------------------------------------------------------------------- machine

def _cpu_model() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def _cores() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:
        return os.cpu_count() or 1


def _version(dist: str) -> str:
    from importlib import metadata

    try:
        return metadata.version(dist)
    except metadata.PackageNotFoundError:
        return ""


@functools.lru_cache(maxsize=None)
def git_commit() -> str:
    """Short commit of the checkout, with "-dirty" when the tree has changes (results then are not reproducible from the commit alone)."""
    try:
        head = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=REPO_DIR, capture_output=True, text=True, timeout=10)
        if head.returncode != 0:
            return "unknown"
        dirty = subprocess.run(
            ["git", "status", "--porcelain", "--untracked-files=no"], cwd=REPO_DIR, capture_output=True, text=True, timeout=30
        )
        return head.stdout.strip() + ("-dirty" if dirty.stdout.strip() else "")
    except (OSError, subprocess.SubprocessError):
        return "unknown"


def machine_kind(device: str) -> str:
    """Short label used in result file names: cpu-2core, gpu-nvidia-h100-80gb-hbm3, ..."""
    if device == "cuda":
        name = torch.cuda.get_device_name(0).lower()
        return "gpu-" + "".join(c if c.isalnum() else "-" for c in name).strip("-")
    threads = torch.get_num_threads()
    return f"cpu-{_cores()}core" + (f"-{threads}thread" if threads != _cores() else "")


@functools.lru_cache(maxsize=None)
def machine_info(device: str) -> Dict[str, str]:
    """The columns every result row carries, so a CSV line says where it was measured."""
    info = {
        "machine": machine_kind(device),
        "cpu_model": _cpu_model(),
        "cores": str(_cores()),
        "threads": str(torch.get_num_threads()),
        # OpenMP's spin-waiting makes 2 threads 30x slower when another process holds a core; run_all.sh sets PASSIVE
        "omp_wait_policy": os.environ.get("OMP_WAIT_POLICY", ""),
        "gpu": torch.cuda.get_device_name(0) if device == "cuda" else "",
        "torch": torch.__version__,
        "cuda": (torch.version.cuda or "") if device == "cuda" else "",
        "triton": _version("triton"),
        "transformers": _version("transformers"),
        "python": platform.python_version(),
        "commit": git_commit(),
    }
    return info


def describe(device: str) -> str:
    m = machine_info(device)
    gpu = f", GPU {m['gpu']} (CUDA {m['cuda']})" if m["gpu"] else ""
    return (
        f"{m['machine']}: {m['cpu_model']}, {m['cores']} cores, {m['threads']} torch threads, "
        f"OMP_WAIT_POLICY={m['omp_wait_policy'] or 'unset'}{gpu}; "
        f"torch {m['torch']}, triton {m['triton'] or '-'}, python {m['python']}, commit {m['commit']}"
    )


# ----------------------------------------------------------------------------- timing

@dataclass
class Timing:
    times_s: List[float]
    first_call_s: float
    last: object = None  # what the last timed call returned (the loss, to record its value)

    @property
    def median_ms(self) -> float:
        return 1e3 * statistics.median(self.times_s)

    def quartiles_ms(self):
        xs = sorted(self.times_s)
        if len(xs) < 2:
            return 1e3 * xs[0], 1e3 * xs[0]
        q = statistics.quantiles(xs, n=4, method="inclusive")
        return 1e3 * q[0], 1e3 * q[2]

    def columns(self) -> Dict[str, str]:
        q1, q3 = self.quartiles_ms()
        return {
            "repeats": str(len(self.times_s)),
            "median_ms": f"{self.median_ms:.4f}",
            "q1_ms": f"{q1:.4f}",
            "q3_ms": f"{q3:.4f}",
            "iqr_ms": f"{q3 - q1:.4f}",
            "min_ms": f"{1e3 * min(self.times_s):.4f}",
            "first_call_ms": f"{1e3 * self.first_call_s:.1f}",
        }


def _sync(device: str) -> None:
    if device == "cuda":
        torch.cuda.synchronize()


def time_callable(
    fn: Callable[[], object],
    device: str,
    *,
    warmup: int = 2,
    repeats: int = 5,
    min_time_s: float = 1.0,
    max_repeats: int = 100,
) -> Timing:
    """Median-based timing of fn(); see the module docstring."""
    if warmup < 1 or repeats < 1:
        raise ValueError(f"warmup and repeats must be >= 1, got warmup={warmup}, repeats={repeats}")
    _sync(device)
    t0 = time.perf_counter()
    fn()
    _sync(device)
    first = time.perf_counter() - t0
    for _ in range(warmup - 1):
        fn()
    _sync(device)
    times: List[float] = []
    while len(times) < repeats or (sum(times) < min_time_s and len(times) < max_repeats):
        t0 = time.perf_counter()
        out = fn()
        _sync(device)
        times.append(time.perf_counter() - t0)
    return Timing(times, first, out)


# ----------------------------------------------------------------------------- memory

def _proc_status_mb(*keys: str) -> Dict[str, float]:
    out = {}
    with open("/proc/self/status") as f:
        for line in f:
            k, _, v = line.partition(":")
            if k in keys:
                out[k] = int(v.split()[0]) / 1024.0  # kB -> MiB
    return out


def cpu_peak_growth_mb(fn: Callable[[], object]) -> float:
    """Peak resident-memory growth (MiB) of one fn() call in this process, above what is resident before it."""
    gc.collect()
    base = _proc_status_mb("VmRSS")["VmRSS"]
    with open("/proc/self/clear_refs", "w") as f:
        f.write("5")  # reset VmHWM to the current RSS
    fn()
    peak = _proc_status_mb("VmHWM")["VmHWM"]
    return peak - base


def cuda_peak_growth_mb(fn: Callable[[], object]) -> float:
    torch.cuda.synchronize()
    gc.collect()
    torch.cuda.empty_cache()
    torch.cuda.reset_peak_memory_stats()
    base = torch.cuda.memory_allocated()
    fn()
    torch.cuda.synchronize()
    return (torch.cuda.max_memory_allocated() - base) / 2**20


def probe_env() -> Dict[str, str]:
    env = dict(os.environ)
    # A fixed threshold disables glibc's dynamic one: every block >= 64 KiB is its own mmap, returned on free.
    env["MALLOC_MMAP_THRESHOLD_"] = "65536"
    env["MALLOC_TRIM_THRESHOLD_"] = "0"
    return env


def malloc_pinned() -> bool:
    return os.environ.get("MALLOC_MMAP_THRESHOLD_") == probe_env()["MALLOC_MMAP_THRESHOLD_"]


def reexec_with_pinned_malloc() -> None:
    """Restart this script with glibc's mmap threshold pinned (it is read once, at process start)."""
    sys.stdout.flush()
    os.execve(sys.executable, [sys.executable] + sys.argv, probe_env())


def measure_cpu_memory_subprocess(script: str, params: Dict, backend: str, mode: str, threads: int, timeout_s: float = 300.0) -> float:
    """Run `harness.py mem-probe` in a fresh interpreter and return its peak growth in MiB (raises on failure)."""
    cmd = [
        sys.executable,
        os.path.join(BENCH_DIR, "harness.py"),
        "mem-probe",
        "--script", os.path.abspath(script),
        "--params", json.dumps(params),
        "--backend", backend,
        "--mode", mode,
        "--threads", str(threads),
    ]
    res = subprocess.run(cmd, capture_output=True, text=True, env=probe_env(), timeout=timeout_s)
    if res.returncode != 0:
        tail = (res.stderr or res.stdout).strip().splitlines()[-1:] or ["no output"]
        raise RuntimeError(f"memory probe failed ({backend}, {params}): {tail[0]}")
    return float(json.loads(res.stdout.strip().splitlines()[-1])["peak_growth_mb"])


def load_script(path: str):
    spec = importlib.util.spec_from_file_location("_mlkd_bench_" + os.path.basename(path)[:-3], path)
    mod = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = mod
    spec.loader.exec_module(mod)
    return mod


# ----------------------------------------------------------------------------- op benchmarks

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


def _error(e: Exception) -> str:
    msg = str(e).strip().splitlines()[0][:200] if str(e).strip() else ""
    return f"error: {type(e).__name__}: {msg}"


def time_interleaved(
    steps: Dict[str, Callable[[], object]],
    device: str,
    *,
    warmup: int,
    repeats: int,
    min_time_s: float,
    max_repeats: int = 100,
) -> Dict[str, object]:
    """Time several callables round-robin: round r times each of them once.

    On a shared machine the load changes over seconds; interleaving puts every
    backend under the same load, so the ratios of their medians stay fair even
    when absolute times drift. Stops once every callable has `repeats` times and
    the rounds have spent `min_time_s` per callable on average (or after `max_repeats` rounds). A
    callable that raises gets its exception as its result and leaves the rounds.
    """
    out: Dict[str, object] = {}
    first: Dict[str, float] = {}
    for name, fn in steps.items():
        try:
            _sync(device)
            t0 = time.perf_counter()
            fn()
            _sync(device)
            first[name] = time.perf_counter() - t0
            for _ in range(warmup - 1):
                fn()
        except Exception as e:  # recorded in the row, not hidden
            out[name] = e
    live = [n for n in steps if n not in out]
    times: Dict[str, List[float]] = {n: [] for n in live}
    last: Dict[str, object] = {}
    rounds = 0
    # at least `repeats` rounds; more (up to max_repeats) until the rounds took min_time_s per callable on average
    while live and (rounds < repeats or (sum(sum(times[n]) for n in live) < min_time_s * len(live) and rounds < max_repeats)):
        for name in list(live):
            try:
                _sync(device)
                t0 = time.perf_counter()
                last[name] = steps[name]()
                _sync(device)
                times[name].append(time.perf_counter() - t0)
            except Exception as e:
                out[name] = e
                live.remove(name)
        rounds += 1
    for name in live:
        out[name] = Timing(times[name], first[name], last.get(name))
    return out


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
                    row["status"] = _error(res)
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
                row["status"] = "ok; memory " + _error(e)
        del compiled
        _add_ratios(rows)
        for row in rows.values():
            log(_summary(row))
        finished = [dict(r, **machine_info(device), timestamp=_now()) for r in rows.values()]
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


def _now() -> str:
    return _dt.datetime.now().isoformat(timespec="seconds")


# ----------------------------------------------------------------------------- CSV

def append_csv(path: str, rows: Sequence[Dict[str, str]]) -> None:
    """Append rows; when they bring new columns, rewrite the file with the union header (old rows get blanks)."""
    if not rows:
        return
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    old_rows: List[Dict[str, str]] = []
    header: List[str] = []
    if os.path.exists(path) and os.path.getsize(path) > 0:
        with open(path, newline="") as f:
            reader = csv.DictReader(f)
            header = list(reader.fieldnames or [])
            old_rows = list(reader)
    new_cols = [k for r in rows for k in r if k not in header]
    merged = header + list(dict.fromkeys(new_cols))
    if new_cols or not header:
        with open(path, "w", newline="") as f:
            w = csv.DictWriter(f, fieldnames=merged, restval="")
            w.writeheader()
            w.writerows(old_rows)
            w.writerows(rows)
    else:
        with open(path, "a", newline="") as f:
            csv.DictWriter(f, fieldnames=merged, restval="").writerows(rows)


def read_csv(path: str) -> List[Dict[str, str]]:
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


def result_path(name: str, device: str, quick: bool, out_dir: Optional[str]) -> str:
    """benchmarks/results/<name>_<machine>.csv; --quick runs go to a temp folder so CI smoke runs never touch the results."""
    folder = out_dir or (QUICK_DIR if quick else RESULTS_DIR)
    return os.path.join(folder, f"{name}_{machine_kind(device)}.csv")


# ----------------------------------------------------------------------------- common CLI

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


# ----------------------------------------------------------------------------- mem-probe entry

def _mem_probe(argv: Sequence[str]) -> None:
    p = argparse.ArgumentParser(prog="harness.py mem-probe")
    p.add_argument("--script", required=True)
    p.add_argument("--params", required=True)
    p.add_argument("--backend", required=True)
    p.add_argument("--mode", required=True)
    p.add_argument("--threads", type=int, required=True)
    a = p.parse_args(argv)
    torch.set_num_threads(a.threads)
    bench: OpBenchmark = load_script(a.script).BENCHMARK
    inputs = bench.build_inputs(json.loads(a.params), "cpu", 0)
    compiled = compile_reference(bench) if a.backend == COMPILE else None
    step = make_step(bench, inputs, a.backend, a.mode, compiled)
    step()  # warm-up: lazy initialisation, thread pools, compilation; its buffers are freed before measuring
    growth = cpu_peak_growth_mb(step)
    print(json.dumps({"peak_growth_mb": growth}))


if __name__ == "__main__":
    if len(sys.argv) > 1 and sys.argv[1] == "mem-probe":
        sys.path.insert(0, BENCH_DIR)
        _mem_probe(sys.argv[2:])
    else:
        raise SystemExit("usage: python benchmarks/harness.py mem-probe ... (internal; run the benchmark_*.py scripts)")
