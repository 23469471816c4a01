"""The fresh process of one CPU memory measurement (peakmem.measure_cpu_memory_subprocess starts it):
python benchmarks/mem_probe.py --script S --params JSON --backend B --mode M --threads N.
Prints {"peak_growth_mb": ...}. Internal: run the benchmark_*.py scripts instead."""
from __future__ import annotations

import argparse
import json
import os
import sys
from typing import Sequence

import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from harness import COMPILE, OpBenchmark, compile_reference, load_script, make_step  # noqa: E402
from peakmem import cpu_peak_growth_mb  # noqa: E402


def main(argv: Sequence[str] = None) -> None:
    p = argparse.ArgumentParser(prog="mem_probe.py")
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
    print(json.dumps({"peak_growth_mb": cpu_peak_growth_mb(step)}))


if __name__ == "__main__":
    main()
