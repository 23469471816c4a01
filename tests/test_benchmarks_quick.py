"""Smoke tests of benchmarks/: the harness's statistics, memory probe and CSV, and --quick runs of the scripts.

Each --quick run takes seconds; they run in-process (main(argv)) and write to
pytest's tmp_path, never to benchmarks/results/.
"""
import importlib.util
import os
import re
import sys

import pytest
import torch

import mlkd_fast

BENCH = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "benchmarks")
sys.path.insert(0, BENCH)


import harness  # noqa: E402  (benchmarks/harness.py, the module the scripts import too)
import hostinfo  # noqa: E402
import peakmem  # noqa: E402
import resultfile  # noqa: E402
import timer  # noqa: E402


def load(name):
    spec = importlib.util.spec_from_file_location(f"_bench_{name}", os.path.join(BENCH, f"{name}.py"))
    mod = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = mod
    spec.loader.exec_module(mod)
    return mod


def test_timing_median_and_iqr():
    t = timer.Timing([0.004, 0.001, 0.003, 0.002, 0.005], first_call_s=1.0)
    cols = t.columns()
    assert float(cols["median_ms"]) == pytest.approx(3.0)
    assert float(cols["q1_ms"]) == pytest.approx(2.0)
    assert float(cols["q3_ms"]) == pytest.approx(4.0)
    assert float(cols["iqr_ms"]) == pytest.approx(2.0)
    assert float(cols["min_ms"]) == pytest.approx(1.0)
    assert cols["repeats"] == "5"


def test_time_callable_counts_calls_and_returns_last_value():
    calls = []
    t = timer.time_callable(lambda: calls.append(1) or len(calls), "cpu", warmup=2, repeats=3, min_time_s=0.0)
    assert len(t.times_s) == 3 and len(calls) == 5 and t.last == 5
    with pytest.raises(ValueError, match="repeats"):
        timer.time_callable(lambda: None, "cpu", repeats=0)


def test_time_interleaved_runs_round_robin_and_drops_failures():
    order = []

    def ok(name):
        return lambda: order.append(name) or name

    def flaky():
        order.append("c")
        if order.count("c") > 2:  # first call and warm-up pass, the first timed call raises
            raise RuntimeError("boom")

    res = timer.time_interleaved({"a": ok("a"), "b": ok("b"), "c": flaky}, "cpu", warmup=2, repeats=3, min_time_s=0.0)
    assert order[:6] == ["a", "a", "b", "b", "c", "c"]  # first call + warm-up per callable
    assert order[6:] == ["a", "b", "c", "a", "b", "a", "b"]  # rounds; c leaves after raising
    assert isinstance(res["c"], RuntimeError)
    assert len(res["a"].times_s) == len(res["b"].times_s) == 3 and res["a"].last == "a"


def test_cpu_peak_growth_sees_a_transient_allocation():
    """In a fresh process with glibc's mmap threshold pinned, as the harness measures: in a long-lived test
    process, memory freed by earlier tests is reused and the growth of resident memory can read 0."""
    import subprocess

    code = (
        "import sys, torch; sys.path.insert(0, sys.argv[1]); import peakmem\n"
        "def alloc():\n    x = torch.ones(25 * 2**20)\n    return float(x[-1])\n"
        "print(peakmem.cpu_peak_growth_mb(alloc), peakmem.cpu_peak_growth_mb(lambda: None))"
    )
    out = subprocess.run([sys.executable, "-c", code, BENCH], capture_output=True, text=True, env=peakmem.probe_env(),
                         timeout=120)
    assert out.returncode == 0, out.stderr
    growth, idle = (float(v) for v in out.stdout.split())
    assert 95 <= growth <= 140, growth  # 100 MiB touched, then freed before returning
    assert idle < 20


def test_append_csv_extends_the_header(tmp_path):
    path = str(tmp_path / "r.csv")
    resultfile.append_csv(path, [{"a": "1", "b": "2"}])
    resultfile.append_csv(path, [{"a": "3", "b": "4"}])
    resultfile.append_csv(path, [{"a": "5", "c": "6"}])
    rows = resultfile.read_csv(path)
    assert [r["a"] for r in rows] == ["1", "3", "5"]
    assert rows[0]["c"] == "" and rows[2]["b"] == "" and rows[2]["c"] == "6"


def test_machine_info_names_cpu_and_versions():
    info = hostinfo.machine_info("cpu")
    assert re.fullmatch(r"cpu-[a-z0-9-]+-\d+core(-\d+thread)?", info["machine"])  # processor, cores[, threads]
    assert hostinfo.cpu_slug(info["cpu_model"]) in info["machine"]
    assert info["torch"] == torch.__version__ and info["cpu_model"] and info["commit"]


def _op_rows(rows, expected_backends):
    assert {r["backend"] for r in rows} == set(expected_backends)
    bad = [(r["backend"], r["mode"], r["status"]) for r in rows if r["status"] != "ok"]
    assert not bad, bad
    for r in rows:
        assert float(r["median_ms"]) > 0 and float(r["iqr_ms"]) >= 0
        assert r["value"] != "" and r["machine"] == hostinfo.machine_kind("cpu")
        if r["backend"] == "torch":
            assert r["speedup_vs_torch"] == "1.000"


@pytest.mark.parametrize("script", ["benchmark_relation_kl", "benchmark_sample_relation_kl", "benchmark_sample_contrastive"])
def test_op_benchmark_quick(script, tmp_path):
    mod = load(script)
    rows = harness.run_op_main(mod.BENCHMARK, mod.cases("cpu", True), harness.op_args("", ["--quick", "--out-dir", str(tmp_path)]), None)
    expected = [b for b in mlkd_fast.available_backends() if b != "triton"]
    _op_rows(rows, expected)
    on_disk = resultfile.read_csv(str(tmp_path / f"{mod.BENCHMARK.op}_{hostinfo.machine_kind('cpu')}.csv"))
    assert len(on_disk) == len(rows) == len(mod.cases("cpu", True)) * len(expected) * 2
    measured = [r for r in rows if r.get("peak_mem_mb")]
    assert {r["backend"] for r in measured} == set(expected)  # one fresh-process probe per backend
    # backends agree on the loss they time (fp32 inputs; bf16 rows are looser)
    by_shape = {}
    for r in rows:
        by_shape.setdefault((r["group"], r.get("B"), r.get("L"), r["dtype"]), []).append(float(r["value"]))
    for key, vals in by_shape.items():
        tol = 2e-2 if key[3] == "bf16" else 1e-3
        assert max(vals) - min(vals) <= tol * max(1.0, abs(vals[0])), (key, vals)


def test_compile_rows_record_failures_instead_of_raising(tmp_path):
    mod = load("benchmark_relation_kl")

    def broken(x):
        raise RuntimeError("no compiler")

    bench = harness.OpBenchmark("relation_kl", mod.build_inputs, mod.call, broken, ("student",), mod.BENCHMARK.script)
    case = harness.OpCase("L", mod.shape(1, 8, Dt=24, Ds=12))
    rows = harness.run_op_cases(bench, [case], device="cpu", backends=["torch", harness.COMPILE], warmup=1, repeats=1,
                                min_time_s=0.0, memory=False, out_csv=str(tmp_path / "x.csv"), log=lambda s: None)
    status = {(r["backend"], r["mode"]): r["status"] for r in rows}
    assert status[("torch", "fwd")] == "ok"
    assert status[(harness.COMPILE, "fwd")].startswith("error: RuntimeError: no compiler")


def test_heads_latency_quick(tmp_path):
    mod = load("benchmark_heads_latency")
    assert mod.main(["--quick", "--out-dir", str(tmp_path)]) == 0
    rows = resultfile.read_csv(str(tmp_path / f"heads_latency_{hostinfo.machine_kind('cpu')}.csv"))
    assert sorted(int(r["heads"]) for r in rows) == [3, 12]
    assert all(r["status"] == "ok" for r in rows)
    assert len({r["params"] for r in rows}) == 1  # the models differ only in how D is cut into heads
    assert next(r for r in rows if r["heads"] == "12")["speedup_vs_12heads"] == "1.000"


def test_e2e_quick(tmp_path):
    mod = load("benchmark_e2e")
    assert mod.main(["--quick", "--out-dir", str(tmp_path), "--no-memory"]) == 0
    rows = resultfile.read_csv(str(tmp_path / f"e2e_{hostinfo.machine_kind('cpu')}.csv"))
    assert sorted(r["stage"] for r in rows if r["backend"] == "torch") == ["1", "2"]
    fused = [r for r in rows if r["backend"] == "cpp"]
    assert len(fused) == 2
    for r in rows:
        if r["backend"] == "torch" or "cpp" in mlkd_fast.available_backends():
            assert r["status"] == "ok", r["status"]
            phases = sum(float(r[f"{p}_ms"]) for p in mod.PHASES)
            assert phases == pytest.approx(float(r["median_ms"]), rel=0.5)  # single repeat: phases sum to the step
        else:
            assert r["status"].startswith("unavailable")


def test_recipe_quick(tmp_path):
    mod = load("benchmark_recipe")
    assert mod.main(["--quick", "--out-dir", str(tmp_path), "--set-size", "64"]) == 0
    rows = resultfile.read_csv(str(tmp_path / f"recipe_{hostinfo.machine_kind('cpu')}.csv"))
    steps = [r for r in rows if r["kind"] == "step"]
    assert sorted((r["way"], r["stage"]) for r in steps) == [(w, s) for w in sorted(mod.WAYS) for s in "12"]
    for r in steps:
        assert float(r["step_ms"]) == pytest.approx(sum(float(r[f"{p}_ms"]) for p in mod.PHASES), rel=1e-3)
    recipes = {(r["way"], r["epochs"]): r for r in rows if r["kind"] == "recipe"}
    assert sorted(recipes) == [(w, e) for w in ("project", "project-bf16", "project-compile")
                               for e in ("20+15", "3+3")]
    # the whole recipe is the build plus the epochs' steps: check the arithmetic of the rows by hand
    step = {(r["way"], r["stage"]): float(r["step_ms"]) / 1e3 for r in steps}
    n_steps = -(-64 // 4)
    for way in ("project", "project-bf16"):
        r = recipes[way, "3+3"]
        assert float(r["authors_s"]) == pytest.approx(n_steps * 3 * (step["authors", "1"] + step["authors", "2"]), rel=1e-2, abs=0.2)
        project = float(r["cache_build_s"]) + n_steps * 3 * (step[way, "1"] + step[way, "2"])
        assert float(r["project_s"]) == pytest.approx(project, rel=1e-2, abs=0.2)
    # the project's teacher phase reads the cache: it never runs the teacher
    assert all(float(r["teacher_ms"]) < 50 for r in steps if r["way"] != "authors")


def test_cache_reuse_quick(tmp_path):
    mod = load("benchmark_cache_reuse")
    assert mod.main(["--quick", "--out-dir", str(tmp_path)]) == 0
    rows = resultfile.read_csv(str(tmp_path / f"cache_reuse_{hostinfo.machine_kind('cpu')}.csv"))
    assert sorted((r["objective"], r["cache"]) for r in rows) == [("kd", "none"), ("kd", "read"), ("mlkd", "build"),
                                                                  ("mlkd", "none"), ("mlkd", "read")]
    for r in rows:  # the speed-up is the no-cache run's time over this run's
        base = next(float(x["wall_s"]) for x in rows if (x["objective"], x["cache"]) == (r["objective"], "none"))
        wall = float(r["wall_s"])  # both walls are written to 0.01 s: the ratio of the written ones is that close
        low, high = (base - 0.005) / (wall + 0.005), (base + 0.005) / max(wall - 0.005, 1e-9)
        assert low - 0.01 <= float(r["speedup_vs_no_cache"]) <= high + 0.01


def test_plot_writes_pngs_and_summary(tmp_path):
    mod = load("benchmark_heads_latency")
    assert mod.main(["--quick", "--out-dir", str(tmp_path)]) == 0
    assert load("benchmark_recipe").main(["--quick", "--out-dir", str(tmp_path), "--set-size", "64"]) == 0
    load("plot").main(["--dir", str(tmp_path)])
    kind = hostinfo.machine_kind("cpu")
    for name in ("heads_latency", "recipe"):
        assert (tmp_path / f"{name}_{kind}.png").stat().st_size > 1000
    summary = (tmp_path / f"summary_{kind}.md").read_text()
    assert "heads vs latency" in summary and "whole recipe: data to distilled student" in summary


def test_a_failed_measurement_makes_the_exit_status_non_zero(capsys):
    ok = {"op": "x", "backend": "cpp", "status": "ok"}
    assert resultfile.exit_status([ok, dict(ok, status="ok; memory not measured: glibc's mmap threshold is not pinned")]) == 0
    assert resultfile.exit_status([ok, dict(ok, backend="torch", status="error: RuntimeError: boom")]) == 1
    assert "FAILED: op=x backend=torch: error: RuntimeError: boom" in capsys.readouterr().err
    assert resultfile.exit_status([dict(ok, status="ok; memory error: RuntimeError: probe died")]) == 1
    assert resultfile.exit_status([dict(ok, status="oom: CUDA out of memory")]) == 1
    assert resultfile.exit_status([dict(ok, status="oom: CUDA out of memory")], allowed=("ok", "oom")) == 0
