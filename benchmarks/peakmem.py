"""Peak memory of one call.

- CPU: a fresh Python process per (backend, shape) (mem_probe.py) builds the
  inputs, makes one warm-up call, reads its resident set size (VmRSS), resets
  the kernel's high-water mark (writing "5" to /proc/self/clear_refs), makes
  one measured call and reports VmHWM - VmRSS: the growth of resident memory
  above the inputs. glibc's dynamic mmap threshold is pinned
  (MALLOC_MMAP_THRESHOLD_) so that large tensors freed by the warm-up go back
  to the OS instead of staying in the heap and hiding the measured call's
  allocations.
- CUDA: in-process, torch.cuda.max_memory_allocated() after
  reset_peak_memory_stats(), minus what was allocated before the call.
"""
from __future__ import annotations

import gc
import json
import os
import subprocess
import sys
from typing import Callable, Dict

import torch

BENCH_DIR = os.path.dirname(os.path.abspath(__file__))


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
    """Run mem_probe.py in a fresh interpreter and return its peak growth in MiB (raises on failure)."""
    cmd = [
        sys.executable,
        os.path.join(BENCH_DIR, "mem_probe.py"),
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
