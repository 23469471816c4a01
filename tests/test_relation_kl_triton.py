"""backend="triton" of relation_kl / sample_relation_kl against the float64 reference.

Runs on CPU tensors in the Triton interpreter (TRITON_INTERPRET=1, set by
conftest.py when there is no GPU) and on CUDA tensors when a GPU is present;
each case skips visibly where its device is missing. Interpreter shapes are
small (every program costs milliseconds there) but cross every tile boundary:
L = 70 is two 64-row blocks and two 64-key tiles, d = 312 five 64-column
chunks of the head dimension, d = 26 a padded 32-wide tile.
"""
import os

import pytest
import torch

import mlkd_fast as mf
from mlkd_fast import backends
from mlkd_fast.ops import reference

pytest.importorskip("triton")

from triton_devices import DEVICES, gpu_only  # noqa: E402

FP32, FP16, BF16 = torch.float32, torch.float16, torch.bfloat16
# (loss rel tol, loss abs tol, grad tol as a fraction of the largest reference grad entry)
TOL = {FP32: (1e-5, 1e-6, 1e-4), FP16: (1e-3, 1e-5, 1e-2), BF16: (1e-2, 1e-4, 3e-2)}


def ragged(B, L, gen, holes=False):
    """Random lengths in [0, L] with the first sequence full and the last fully padded (when B > 2)."""
    lengths = torch.randint(0, L + 1, (B,), generator=gen)
    lengths[0] = L
    if B > 2:
        lengths[-1] = 0
    mask = torch.arange(L)[None, :] < lengths[:, None]
    if holes:  # padding inside sequences, not only at their ends
        mask &= torch.rand(B, L, generator=gen) > 0.3
    return mask


def inputs(B, L, Dt, Ds, dtype, device, seed, mask_kind, teacher_grad):
    gen = torch.Generator().manual_seed(seed)
    t = torch.randn(B, L, Dt, generator=gen).to(device=device, dtype=dtype).requires_grad_(teacher_grad)
    s = torch.randn(B, L, Ds, generator=gen).to(device=device, dtype=dtype).requires_grad_(True)
    mask = None if mask_kind is None else ragged(B, L, gen, holes=mask_kind == "holes").to(device)
    return t, s, mask


def reference64(t, s, splits, mask, upstream):
    """Loss and grads of the reference in float64 on float64 copies of the same values."""
    t64 = t.detach().double().requires_grad_(t.requires_grad)
    s64 = s.detach().double().requires_grad_(True)
    loss = reference.relation_kl(t64, s64, splits, mask)
    loss.backward(torch.tensor(upstream, dtype=torch.float64, device=loss.device))
    return loss.detach(), t64.grad, s64.grad


def assert_grad_close(got, want, tol, what, eager_err=0.0):
    """Max error within tol x the largest reference entry, or within 10x the eager fp32 reference's error.

    The second bound matters for nearly one-hot relations (wide heads: x_i . x_i / sqrt(d) = sqrt(d)
    dominates every row), where q - p cancels and fp32 itself cannot reach tol relative to the tiny grads.
    """
    assert got is not None and got.dtype != torch.float64
    assert torch.isfinite(got).all(), f"{what}: non-finite gradient"
    err = (got.double() - want).abs().max().item()
    scale = want.abs().max().item()
    assert err <= max(tol * scale, 10 * eager_err) + 1e-12, (
        f"{what}: max error {err:.3g} vs largest entry {scale:.3g} (eager fp32 error {eager_err:.3g})"
    )


def eager_fp32_errors(t, s, splits, mask, upstream, dt_want, ds_want):
    """Errors of the eager reference run in fp32 on the same fp32 inputs (the accuracy fp32 allows)."""
    t32 = t.detach().requires_grad_(t.requires_grad)
    s32 = s.detach().requires_grad_(True)
    reference.relation_kl(t32, s32, splits, mask).backward(torch.tensor(upstream, device=s.device))
    dt_err = (t32.grad.double() - dt_want).abs().max().item() if t.requires_grad else 0.0
    return dt_err, (s32.grad.double() - ds_want).abs().max().item()


def check_against_reference(B, L, Dt, Ds, splits, dtype, device, mask_kind, teacher_grad, seed=0, upstream=1.7):
    t, s, mask = inputs(B, L, Dt, Ds, dtype, device, seed, mask_kind, teacher_grad)
    loss = mf.relation_kl(t, s, splits, mask, backend="triton")
    assert loss.dtype == torch.float32 and loss.dim() == 0 and loss.device.type == device
    loss.backward(torch.tensor(upstream, device=device))
    want, dt_want, ds_want = reference64(t, s, splits, mask, upstream)
    rtol, atol, gtol = TOL[dtype]
    assert loss.item() == pytest.approx(want.item(), rel=rtol, abs=atol)
    assert s.grad.dtype == dtype and s.grad.shape == s.shape
    dt_eager, ds_eager = eager_fp32_errors(t, s, splits, mask, upstream, dt_want, ds_want) if dtype == FP32 else (0.0, 0.0)
    assert_grad_close(s.grad, ds_want, gtol, "student grad", ds_eager)
    if teacher_grad:
        assert_grad_close(t.grad, dt_want, gtol, "teacher grad", dt_eager)


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize(
    "B,L,Dt,Ds,splits,dtype,mask_kind,teacher_grad",
    [
        (2, 17, 64, 32, 2, FP32, "ragged", False),     # one tile, padded key tile
        (2, 70, 312, 312, 12, FP32, "ragged", False),  # d = 26 -> 32; L crosses row and key tiles
        (2, 70, 312, 312, 12, FP16, "ragged", False),
        (3, 70, 48, 26, 2, FP16, "holes", True),       # Dt != Ds, padding inside sequences, teacher grad
        (1, 70, 312, 200, 1, FP32, None, True),        # L_EMB-like: d = 312 / 200 in several chunks
        (3, 1, 24, 26, 2, FP32, "ragged", True),       # L = 1, one sequence fully padded
        (2, 40, 96, 26, 2, BF16, "ragged", False),     # bf16 (upcast tiles in the interpreter)
    ],
)
def test_relation_kl_matches_reference(device, B, L, Dt, Ds, splits, dtype, mask_kind, teacher_grad):
    check_against_reference(B, L, Dt, Ds, splits, dtype, device, mask_kind, teacher_grad)


@pytest.mark.parametrize("device", DEVICES)
def test_relation_kl_all_padded_is_zero_with_zero_grads(device):
    t, s, _ = inputs(2, 20, 32, 16, FP32, device, 1, None, True)
    mask = torch.zeros(2, 20, dtype=torch.bool, device=device)
    loss = mf.relation_kl(t, s, 2, mask, backend="triton")
    loss.backward()
    assert loss.item() == 0.0
    assert torch.count_nonzero(s.grad) == 0 and torch.count_nonzero(t.grad) == 0


@pytest.mark.parametrize("device", DEVICES)
def test_relation_kl_noncontiguous_and_int_mask(device):
    gen = torch.Generator().manual_seed(3)
    t = torch.randn(40, 2, 48, generator=gen).to(device).transpose(0, 1)  # (2, 40, 48), strided
    s_full = torch.randn(2, 40, 64, generator=gen).to(device)
    s = s_full[:, :, 8:40].detach().requires_grad_(True)  # (2, 40, 32), row stride 64
    mask = ragged(2, 40, gen).to(device=device, dtype=torch.int32)
    assert not t.is_contiguous() and not s.is_contiguous()
    loss = mf.relation_kl(t, s, 4, mask, backend="triton")
    loss.backward()
    want, _, ds_want = reference64(t, s, 4, mask.bool(), 1.0)
    assert loss.item() == pytest.approx(want.item(), rel=1e-5, abs=1e-6)
    assert_grad_close(s.grad, ds_want, 1e-4, "student grad")


@pytest.mark.parametrize("device", DEVICES)
def test_relation_kl_backward_is_deterministic(device):
    t, s, mask = inputs(2, 70, 64, 32, FP32, device, 4, "ragged", False)
    grads = []
    for _ in range(2):
        s.grad = None
        mf.relation_kl(t, s, 2, mask, backend="triton").backward()
        grads.append(s.grad.clone())
    assert torch.equal(grads[0], grads[1])


@pytest.mark.parametrize("device", DEVICES)
def test_sample_relation_kl_matches_reference(device):
    gen = torch.Generator().manual_seed(5)
    t = torch.randn(70, 160, generator=gen).to(device)
    s = torch.randn(70, 72, generator=gen).to(device).requires_grad_(True)
    loss = mf.sample_relation_kl(t, s, backend="triton")
    loss.backward(torch.tensor(0.5, device=device))
    s64 = s.detach().double().requires_grad_(True)
    want = reference.sample_relation_kl(t.double(), s64)
    want.backward(torch.tensor(0.5, dtype=torch.float64, device=device))
    assert loss.item() == pytest.approx(want.item(), rel=1e-5, abs=1e-6)
    assert_grad_close(s.grad, s64.grad, 1e-4, "student grad")


@pytest.mark.parametrize("device", DEVICES)
def test_relation_kl_rejects_fp64(device):
    t = torch.randn(1, 4, 8, dtype=torch.float64, device=device)
    with pytest.raises(TypeError, match="fp32, fp16 or bf16"):
        mf.relation_kl(t, t, 2, backend="triton")


def test_gpu_configs_are_valid_tiles(monkeypatch):
    """The per-shape heuristic (no autotune) gives tl.dot-able power-of-two tiles for every L and width."""
    from mlkd_fast.kernels import _common

    monkeypatch.setenv("TRITON_INTERPRET", "0")  # the GPU branch of the heuristic (nothing is launched)
    for L in (1, 17, 70, 512, 16384):
        for widths, itemsize in (((64, 32), 2), ((64, 32), 4), ((64, 64, 64), 4), ((32,), 2)):
            for backward, chunked in ((False, False), (True, False), (False, True), (True, True)):
                blk = _common.relation_blocks(L, widths, itemsize, backward, chunked)
                for size in (blk.block_m, blk.block_n):
                    assert size >= 16 and size & (size - 1) == 0
                    assert size <= max(16, triton_next_pow2(L))
                assert blk.num_warps in (4, 8)
    for d, (block, chunks) in {1: (16, 1), 26: (32, 1), 64: (64, 1), 312: (64, 5), 768: (64, 12)}.items():
        tiling = _common.head_tiling(d)
        assert (tiling.block, tiling.chunks) == (block, chunks)


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
def test_kernels_compile_for_h100(args):
    """What the interpreter cannot check: the kernels compile for sm_90 (no GPU needed) within its resources."""
    import subprocess
    import sys

    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    res = subprocess.run([sys.executable, "-W", "ignore", "-m", "mlkd_fast.kernels._compile_check", *args],
                         capture_output=True, text=True, env=env, timeout=600)
    assert res.returncode == 0, res.stdout + res.stderr
    assert res.stdout.count("ok ") >= 3, res.stdout  # forward, student and teacher backward at least


def triton_next_pow2(n):
    return 1 << (n - 1).bit_length()


# ----------------------------------------------------------------------------- GPU only

@pytest.mark.parametrize("device", [pytest.param("cuda", marks=gpu_only)])
def test_auto_picks_triton_for_cuda(device):
    assert backends.resolve("auto", torch.device(device)) == "triton"


@pytest.mark.parametrize("device", [pytest.param("cuda", marks=gpu_only)])
@pytest.mark.parametrize("dtype", [BF16, FP16, FP32])
def test_relation_kl_headline_shape(device, dtype):
    """The kernel issue's shape: BERT-base teacher (768) and 4L-312 student, 12 splits, L = 512."""
    check_against_reference(4, 512, 768, 312, 12, dtype, device, "ragged", True)


@pytest.mark.parametrize("device", [pytest.param("cuda", marks=gpu_only)])
def test_relation_kl_long_sequence(device):
    """L = 16384: the float64 reference still fits an 80 GB GPU for one split of one sequence."""
    check_against_reference(1, 16384, 64, 32, 1, BF16, device, "ragged", False)
