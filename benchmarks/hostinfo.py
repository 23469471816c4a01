"""Where a benchmark ran: machine, library versions and commit, as the columns every result row carries."""
from __future__ import annotations

import datetime as _dt
import functools
import os
import platform
import re
import subprocess
from typing import Dict

import torch

REPO_DIR = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


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


def cpu_slug(model: str) -> str:
    """'Intel(R) Xeon(R) Processor' -> 'intel-xeon', 'AMD EPYC 7763 64-Core Processor' -> 'amd-epyc-7763-64-core'."""
    text = re.sub(r"\((r|tm)\)|\b(processor|cpu)\b|@.*$", " ", model.lower())
    return "-".join(re.findall(r"[a-z0-9]+", text)) or "unknown"


def cpu_label(model: str, cores: int, threads: int) -> str:
    """The label of a CPU machine: the processor model and core count (and threads where fewer are used), so
    that rows of different processors never share a label (or a result file)."""
    return f"cpu-{cpu_slug(model)}-{cores}core" + (f"-{threads}thread" if threads != cores else "")


def machine_kind(device: str) -> str:
    """Short label used in result file names: cpu-intel-xeon-2core, gpu-nvidia-h100-80gb-hbm3, ..."""
    if device == "cuda":
        name = torch.cuda.get_device_name(0).lower()
        return "gpu-" + "".join(c if c.isalnum() else "-" for c in name).strip("-")
    return cpu_label(_cpu_model(), _cores(), torch.get_num_threads())


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


def now() -> str:
    return _dt.datetime.now().isoformat(timespec="seconds")
