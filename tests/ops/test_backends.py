"""Backend choice and what only one backend has: the C++ threads and instruction sets, the Triton launch
heuristics and its compilation for an H100 (checked without a GPU)."""
import os
import subprocess
import sys

import pytest
import torch
from helpers import BACKENDS, FP32, HAS_TRITON, features, gpu_only, ragged

import mlkd_fast as mf
from mlkd_fast.ops import backends

needs_cpp = pytest.mark.skipif("cpp" not in mf.available_backends(), reason="C++ extension not built")
needs_triton = pytest.mark.skipif(not HAS_TRITON, reason="triton is not importable")


def test_torch_is_always_available():
    assert mf.available_backends()[0] == "torch"


@needs_cpp
def test_auto_uses_cpp_on_cpu_tensors():
    assert backends.resolve("auto", torch.device("cpu")) == "cpp"
    t, s = features(2, 9, 24, 3, FP32), features(2, 9, 12, 3, FP32)
    assert torch.equal(mf.relation_kl(t, s, 3), mf.relation_kl(t, s, 3, backend="cpp"))
    t, s = torch.randn(5, 32), torch.randn(5, 32)
    assert torch.equal(mf.sample_contrastive(t, s), mf.sample_contrastive(t, s, backend="cpp"))


@pytest.mark.parametrize("device", [pytest.param("cuda", marks=gpu_only)])
def test_auto_uses_triton_on_cuda_tensors(device):
    assert backends.resolve("auto", torch.device(device)) == "triton"


@pytest.mark.parametrize("backend,device", [p for p in BACKENDS if p.values[0] == "triton"])
def test_triton_rejects_fp64(backend, device):
    t = torch.randn(3, 1, 8, dtype=torch.float64, device=device)
    with pytest.raises(TypeError, match="fp32, fp16 or bf16"):
        mf.relation_kl(t, t, 2, backend=backend)
    with pytest.raises(TypeError, match="fp32, fp16 or bf16"):
        mf.sample_contrastive(t[:, 0], t[:, 0], backend=backend)


# ----------------------------------------------------------------------------- C++


def _cpp_runs(fn, repeats, threads):
    old = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        return [fn() for _ in range(repeats)]
    finally:
        torch.set_num_threads(old)


def _relation_run(B, L, Dt, Ds, splits, mask):
    t = features(B, L, Dt, splits, FP32, gen=torch.Generator().manual_seed(1)).requires_grad_()
    s = features(B, L, Ds, splits, FP32, gen=torch.Generator().manual_seed(2)).requires_grad_()

    def run():
        t.grad = s.grad = None
        loss = mf.relation_kl(t, s, splits, mask, backend="cpp")
        loss.backward()
        return loss.detach().clone(), t.grad.clone(), s.grad.clone()

    return run


def _contrastive_run(N, D):
    t, s = torch.randn(N, D).requires_grad_(), torch.randn(N, D).requires_grad_()
    labels = torch.randint(0, 3, (N,))

    def run():
        t.grad = s.grad = None
        loss = mf.sample_contrastive(t, s, labels, backend="cpp")
        loss.backward()
        return loss.detach().clone(), t.grad.clone(), s.grad.clone()

    return run


CPP_RUNS = {
    # one (batch, split) per thread
    "relation-per-sequence": lambda: _relation_run(4, 129, 768, 312, 12, ragged(4, 129)),
    # B * splits < 2 * threads: the threads share each sequence's tile pairs (merged in thread order)
    "relation-shared-one": lambda: _relation_run(1, 300, 384, 384, 1, None),
    "relation-shared-ragged": lambda: _relation_run(3, 200, 384, 384, 1, ragged(3, 200)),
    "contrastive": lambda: _contrastive_run(70, 768),
}


@needs_cpp
@pytest.mark.parametrize("case", sorted(CPP_RUNS))
def test_cpp_is_bitwise_reproducible_with_two_threads(case):
    runs = _cpp_runs(CPP_RUNS[case](), 10, 2)
    for r in runs[1:]:
        assert all(torch.equal(x, y) for x, y in zip(runs[0], r))


@needs_cpp
@pytest.mark.parametrize("case", sorted(CPP_RUNS))
def test_cpp_thread_counts_agree(case):
    """Other thread counts change the summation order only (fp32 rounding)."""
    run = CPP_RUNS[case]()
    one, two = _cpp_runs(run, 1, 1)[0], _cpp_runs(run, 1, 2)[0]
    for a, b in zip(one, two):
        assert torch.allclose(a, b, rtol=1e-4, atol=1e-6 * b.abs().max().item())


@needs_cpp
@pytest.mark.parametrize("case", ["relation-per-sequence", "contrastive"])
def test_cpp_baseline_isa_matches_avx2(case):
    """Both compiled instruction-set paths agree (the baseline one runs on CPUs without AVX2)."""
    C = backends.cpp_module()
    isa = C.cpu_isa()
    run = CPP_RUNS[case]()
    out = {}
    try:
        for name in ("base", isa):
            C.set_isa(name)
            out[name] = run()
    finally:
        C.set_isa(isa)
    for a, b in zip(out["base"], out[isa]):
        assert torch.allclose(a, b, rtol=1e-4, atol=1e-6 * b.abs().max().item())


# ----------------------------------------------------------------------------- Triton


@needs_triton
def test_triton_launch_configs_are_valid_tiles(monkeypatch):
    """The per-shape heuristic (no autotune) gives tl.dot-able power-of-two tiles for every L and width."""
    from mlkd_fast.kernels import _common

    monkeypatch.setenv("TRITON_INTERPRET", "0")  # the GPU branch of the heuristic (nothing is launched)
    for L in (1, 17, 70, 512, 16384):
        for widths, itemsize in (((64, 32), 2), ((64, 32), 4), ((64, 64, 64), 4), ((32,), 2)):
            for backward, chunked in ((False, False), (True, False), (False, True), (True, True)):
                blk = _common.relation_blocks(L, widths, itemsize, backward, chunked)
                for size in (blk.block_m, blk.block_n):
                    assert size >= 16 and size & (size - 1) == 0
                    assert size <= max(16, 1 << (L - 1).bit_length())
                assert blk.num_warps in (4, 8)
    for d, (block, chunks) in {1: (16, 1), 26: (32, 1), 64: (64, 1), 312: (64, 5), 768: (64, 12)}.items():
        tiling = _common.head_tiling(d)
        assert (tiling.block, tiling.chunks) == (block, chunks)


@needs_triton
@pytest.mark.parametrize(
    "args",
    [
        # The headline shape (d = 64 / 26) compiles for an H100 without spills, every dtype's configuration.
        ["--dtype", "bf16", "--no-spills"],
        ["--dtype", "fp32", "--no-spills"],
        # Wide heads (L_EMB: d = 768 / 312 in chunks) and the L_SC kernels fit the H100's shared memory.
        ["--dtype", "fp16", "--shape", "32", "128", "768", "312", "1", "--contrastive", "64"],
    ],
    ids=["bf16-headline", "fp32-headline", "fp16-wide-and-contrastive"],
)
def test_triton_kernels_compile_for_h100(args):
    """What the interpreter cannot check: the kernels compile for sm_90 (no GPU needed) within its resources."""
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    res = subprocess.run([sys.executable, "-W", "ignore", "-m", "mlkd_fast.kernels._compile_check", *args],
                         capture_output=True, text=True, env=env, timeout=600)
    assert res.returncode == 0, res.stdout + res.stderr
    assert res.stdout.count("ok ") >= 3, res.stdout  # forward, student and teacher backward at least
