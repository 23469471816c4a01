"""What the op tests share: backend/device parameters, inputs, masks, tolerances and the reference check.

Every op test is parametrised over BACKENDS: torch (the eager reference),
cpp (the compiled extension), triton on CPU tensors in the interpreter
(TRITON_INTERPRET=1, set by conftest.py without a GPU) and triton on CUDA
tensors. A backend that cannot run here skips visibly, with the reason.
"""
from __future__ import annotations

import math

import pytest
import torch

from mlkd_fast.ops import backends

FP64, FP32, FP16, BF16 = torch.float64, torch.float32, torch.float16, torch.bfloat16
INTERPRETER = backends.triton_interpreter()
HAS_CUDA = torch.cuda.is_available()
HAS_TRITON = backends.triton_kernels() is not None
gpu_only = [pytest.mark.gpu, pytest.mark.skipif(not HAS_CUDA, reason="needs a CUDA device")]
_no_triton = pytest.mark.skipif(not HAS_TRITON, reason="triton is not importable")

# (backend, device) pairs
BACKENDS = [
    pytest.param("torch", "cpu", id="torch"),
    pytest.param("cpp", "cpu", id="cpp", marks=pytest.mark.skipif(
        "cpp" not in backends.available_backends(), reason=f"C++ extension not built: {backends.cpp_import_error()}")),
    pytest.param("triton", "cpu", id="triton-interpreter", marks=[_no_triton, pytest.mark.skipif(
        not INTERPRETER, reason="Triton on CPU tensors needs TRITON_INTERPRET=1")]),
    pytest.param("triton", "cuda", id="triton-cuda", marks=[_no_triton, *gpu_only]),
]


def interpreted(backend: str, device: str) -> bool:
    """The Triton interpreter runs every program in Python: it gets the small shapes only."""
    return backend == "triton" and device == "cpu"


def cases(small, large=(), dtypes=(FP64, FP32)):
    """(backend, device, dtype, *case) parameters: `small` cases on every backend, `large` ones on all but
    the interpreter; Triton takes no fp64 (it raises TypeError, tested separately)."""
    out = []
    for b in BACKENDS:
        backend, device = b.values
        for dtype in dtypes:
            if backend == "triton" and dtype == FP64:
                continue
            for case in list(small) + ([] if interpreted(backend, device) else list(large)):
                case = tuple(case) if isinstance(case, (tuple, list)) else (case,)
                name = "-".join(str(c) for c in case)
                out.append(pytest.param(backend, device, dtype, *case, marks=b.marks,
                                        id=f"{b.id}-{str(dtype)[6:]}-{name}"))
    return out


def tolerance(backend: str, dtype: torch.dtype):
    """(loss rel, loss abs, grad tol as a fraction of the largest reference gradient entry).

    torch and cpp compute 16-bit inputs in fp32, so only the rounding of the
    returned gradient (8 or 11 mantissa bits) remains; Triton multiplies
    16-bit tiles on the tensor cores, hence its wider 16-bit bounds.
    """
    if dtype == FP64:
        return 1e-10, 1e-300, 1e-9
    if dtype == FP32:
        return 1e-5, 1e-6, 1e-4
    if backend == "triton":
        return (1e-3, 1e-5, 1e-2) if dtype == FP16 else (1e-2, 1e-4, 3e-2)
    return 1e-5, 1e-7, 2.0**-10 if dtype == FP16 else 2.0**-7


def features(B, L, D, splits, dtype, device="cpu", gen=None):
    """Inputs scaled so that the diagonal logit x_i.x_i / sqrt(d) is about 2 whatever d is: raw randn makes a
    wide split's relation one-hot on its diagonal, whose KL (~1e-5) and gradient no fp32 computation resolves."""
    d = D // splits
    x = torch.randn(B, L, D, dtype=FP64, generator=gen).mul(math.sqrt(2.0) / d**0.25)
    return x.to(device=device, dtype=dtype)


def ragged(B, L, gen=None, holes=False, device="cpu"):
    """Random lengths in [1, L], the first sequence full and the last fully padded (when B > 2);
    holes=True also pads positions inside the sequences."""
    lengths = torch.randint(1, L + 1, (B,), generator=gen)
    lengths[0] = L
    if B > 2:
        lengths[-1] = 0
    mask = torch.arange(L)[None, :] < lengths[:, None]
    if holes:
        mask &= torch.rand(B, L, generator=gen) > 0.3
        mask[0, 0] = True
    return mask.to(device)


def assert_grad_close(got, want, tol, what, floor=0.0):
    """Gradient within tol of the largest reference entry, or within `floor` absolutely (the error of the
    eager fp32 computation itself, for nearly one-hot relations where q - p cancels in fp32)."""
    assert got is not None and got.shape == want.shape, f"{what}: missing or misshapen gradient"
    assert torch.isfinite(got).all(), f"{what}: non-finite gradient"
    err = (got.double() - want.double()).abs().max().item() if got.numel() else 0.0
    scale = want.double().abs().max().item() if want.numel() else 0.0
    assert err <= max(tol * scale, floor) + 1e-300, f"{what}: max error {err:.3g}, largest entry {scale:.3g}, tol {tol:g}"


def run_with_grads(fn, inputs, needs_grad, upstream):
    """fn(*leaves) with fresh leaves; returns (loss, [grads of the leaves that need one])."""
    leaves = [x.detach().requires_grad_(g) for x, g in zip(inputs, needs_grad)]
    loss = fn(*leaves)
    loss.backward(torch.tensor(upstream, dtype=loss.dtype, device=loss.device))
    return loss.detach(), [x.grad for x, g in zip(leaves, needs_grad) if g]


def check_op(backend, op, inputs, needs_grad, upstream=1.7):
    """op(backend, *inputs) against op("torch", ...) on float64 copies: loss and every input gradient.

    In fp32 a gradient may also miss tol by up to 10x the eager fp32 reference's own error.
    """
    dtype = inputs[0].dtype
    rel, abs_, gtol = tolerance(backend, dtype)
    loss, grads = run_with_grads(lambda *x: op(backend, *x), inputs, needs_grad, upstream)
    want, want_grads = run_with_grads(lambda *x: op("torch", *x), [x.double() for x in inputs], needs_grad, upstream)
    assert loss.dim() == 0 and loss.dtype == (FP64 if dtype == FP64 else FP32)
    assert loss.item() == pytest.approx(want.item(), rel=rel, abs=abs_)
    floors = [0.0] * len(grads)
    if dtype == FP32:
        _, eager = run_with_grads(lambda *x: op("torch", *x), inputs, needs_grad, upstream)
        floors = [10 * (e.double() - w).abs().max().item() for e, w in zip(eager, want_grads)]
    for i, (g, w, f) in enumerate(zip(grads, want_grads, floors)):
        assert g.dtype == dtype, f"gradient {i} has dtype {g.dtype}, input {dtype}"
        assert_grad_close(g, w, gtol, f"gradient of input {i}", f)
    return loss

