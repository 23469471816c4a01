"""Result files: CSV rows appended under benchmarks/results/ (or a temp folder for --quick smoke runs),
and the rule that a run with a failed measurement exits non-zero."""
from __future__ import annotations

import csv
import os
import sys
import tempfile
from typing import Dict, List, Optional, Sequence

from hostinfo import machine_kind

BENCH_DIR = os.path.dirname(os.path.abspath(__file__))
RESULTS_DIR = os.path.join(BENCH_DIR, "results")
QUICK_DIR = os.path.join(tempfile.gettempdir(), "mlkd_fast_bench_quick")


def error_status(e: Exception) -> str:
    """A row's status for a measurement that raised."""
    msg = str(e).strip().splitlines()[0][:200] if str(e).strip() else ""
    return f"error: {type(e).__name__}: {msg}"


def exit_status(rows: Sequence[Dict[str, str]], allowed=("ok",)) -> int:
    """0 when every row's status starts with an allowed prefix, else 1 after naming the failed rows.

    Failed rows stay in the CSV (the record of what was tried); the exit code
    tells a driver such as run_all.sh or CI that a measurement is missing.
    """
    def failed(status: str) -> bool:  # "ok; memory error: ..." is a failed measurement too
        return not status.startswith(tuple(allowed)) or "error" in status

    bad = [r for r in rows if failed(r.get("status", ""))]
    for r in bad:
        what = " ".join(f"{k}={v}" for k, v in r.items() if k in ("op", "pair", "group", "backend", "mode", "L", "B", "heads"))
        print(f"FAILED: {what}: {r['status']}", file=sys.stderr)
    return 1 if bad else 0


def append_csv(path: str, rows: Sequence[Dict[str, str]]) -> None:
    """Append rows (atomically: the file is rewritten whole); new columns widen the header (old rows get blanks)."""
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
    # the whole file is written beside and renamed over the old one: an interrupted append never leaves half a row
    tmp = f"{path}.tmp{os.getpid()}"
    with open(tmp, "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=merged, restval="")
        w.writeheader()
        w.writerows(old_rows)
        w.writerows(rows)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


def read_csv(path: str) -> List[Dict[str, str]]:
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


def result_path(name: str, device: str, quick: bool, out_dir: Optional[str]) -> str:
    """benchmarks/results/<name>_<machine>.csv; --quick runs go to a temp folder so CI smoke runs never touch the results."""
    folder = out_dir or (QUICK_DIR if quick else RESULTS_DIR)
    return os.path.join(folder, f"{name}_{machine_kind(device)}.csv")
