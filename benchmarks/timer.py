"""Timing: warm-up calls (the first one is reported separately: it includes
torch.compile's compilation and lazy initialisation), then at least `repeats`
timed calls (more while the total stays under `min_time_s`), summarised as the
median and the inter-quartile range. CUDA work is synchronised before every
clock read. Several callables are timed interleaved, so load from other
processes hits them alike.
"""
from __future__ import annotations

import statistics
import time
from dataclasses import dataclass
from typing import Callable, Dict, List

import torch


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


def sync(device: str) -> None:
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
    sync(device)
    t0 = time.perf_counter()
    fn()
    sync(device)
    first = time.perf_counter() - t0
    for _ in range(warmup - 1):
        fn()
    sync(device)
    times: List[float] = []
    while len(times) < repeats or (sum(times) < min_time_s and len(times) < max_repeats):
        t0 = time.perf_counter()
        out = fn()
        sync(device)
        times.append(time.perf_counter() - t0)
    return Timing(times, first, out)


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
            sync(device)
            t0 = time.perf_counter()
            fn()
            sync(device)
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
                sync(device)
                t0 = time.perf_counter()
                last[name] = steps[name]()
                sync(device)
                times[name].append(time.perf_counter() - t0)
            except Exception as e:
                out[name] = e
                live.remove(name)
        rounds += 1
    for name in live:
        out[name] = Timing(times[name], first[name], last.get(name))
    return out
