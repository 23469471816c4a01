"""backend="cpp" relation_kl / sample_relation_kl against the float64 torch reference.

Fresh random inputs every run. Inputs are scaled so that the diagonal logit
x_i.x_i / sqrt(d) is about 4 whatever d is: with raw randn a D = 384, 1-split
relation is one-hot on its diagonal, its KL ~1e-5 and its gradient a
difference of two numbers within 1e-6 of 1, which no fp32 computation (the
torch backend's included) resolves to 1e-5 relative.
"""
import math

import pytest
import torch

import mlkd_fast as mf
from mlkd_fast import backends
from mlkd_fast.ops import reference

TOL = {torch.float64: 1e-10, torch.float32: 1e-5}


def test_cpp_is_available():
    assert "cpp" in mf.available_backends(), backends.cpp_import_error()
    assert backends.resolve("auto", torch.device("cpu")) == "cpp"


def features(B, L, D, splits, dtype):
    d = D // splits
    return torch.randn(B, L, D, dtype=torch.float64).mul(math.sqrt(2.0) / d**0.25).to(dtype)


def ragged(B, L):
    """Random lengths in [1, L], the last sequence fully padded (when B > 1)."""
    lengths = torch.randint(1, L + 1, (B,))
    if B > 1:
        lengths[-1] = 0
    return torch.arange(L)[None, :] < lengths[:, None]


def rel_err(got, want):
    """Norm-wise relative error ||got - want|| / ||want|| (0 when both are 0)."""
    got, want = got.double(), want.double()
    return ((got - want).norm() / want.norm().clamp_min(1e-300)).item()


def assert_close(got, want, tol, what):
    err = rel_err(got, want)
    assert err <= tol, f"{what}: relative error {err:.3e} (tol {tol:g})"


# fp32 rounding of the logits themselves (~1e-7 of |logit|) moves a KL by up
# to ~1e-7 nats, whatever the implementation: a KL of 1e-4 (L = 2 keys, one
# wide split, p ~ q) can then only be checked to ~1e-7 nats, not 1e-5 relative.
# Measured over 400 draws of that case: eager fp32 torch and cpp both have a
# median relative error of 5e-6 and a 99th percentile of 5e-5.
FP32_LOSS_ABS = 1e-7
# The same case's gradients (norm-wise): median 1e-6, worst of 100 draws 2e-5 for both.
FP32_ILL_CONDITIONED = {(2, 384, 384, 1): 1e-4}


def check_against_reference(t, s, splits, mask, upstream, teacher_grad, grad_tol=None):
    """Loss and gradients of backend="cpp" vs the float64 reference, both scaled by `upstream`."""
    fp64 = torch.float64 in (t.dtype, s.dtype)
    tol = TOL[torch.float64 if fp64 else torch.float32]
    grad_tol = grad_tol or tol
    t = t.detach().requires_grad_(teacher_grad)
    s = s.detach().requires_grad_(True)
    loss = mf.relation_kl(t, s, splits, mask, backend="cpp")
    assert loss.dim() == 0 and loss.dtype == (torch.float64 if fp64 else torch.float32)
    (loss * upstream).backward()
    t64 = t.detach().double().requires_grad_(teacher_grad)
    s64 = s.detach().double().requires_grad_(True)
    ref = reference.relation_kl(t64, s64, splits, mask)
    (ref * upstream).backward()
    assert loss.item() == pytest.approx(ref.item(), rel=tol, abs=1e-300 if fp64 else FP32_LOSS_ABS)
    assert s.grad.dtype == s.dtype and s.grad.shape == s.shape
    assert_close(s.grad, s64.grad, grad_tol, "student grad")
    if teacher_grad:
        assert t.grad.dtype == t.dtype
        assert_close(t.grad, t64.grad, grad_tol, "teacher grad")


SHAPES = [(L, 768, 312, 12) for L in (1, 2, 37, 129, 300)] + [(L, 384, 384, A) for L in (2, 37, 129, 300) for A in (1, 12)]


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32], ids=["fp64", "fp32"])
@pytest.mark.parametrize("L,Dt,Ds,splits", SHAPES)
def test_matches_reference(L, Dt, Ds, splits, dtype):
    B = 3
    t, s = features(B, L, Dt, splits, dtype), features(B, L, Ds, splits, dtype)
    upstream = 0.5 + 3 * torch.rand(()).item()
    grad_tol = FP32_ILL_CONDITIONED.get((L, Dt, Ds, splits)) if dtype == torch.float32 else None
    check_against_reference(t, s, splits, ragged(B, L), upstream, teacher_grad=True, grad_tol=grad_tol)
    check_against_reference(t, s, splits, None, upstream, teacher_grad=False, grad_tol=grad_tol)


def test_bool_and_int_masks_agree():
    t, s = features(2, 37, 48, 4, torch.float64), features(2, 37, 24, 4, torch.float64)
    mask = ragged(2, 37)
    a = mf.relation_kl(t, s, 4, mask, backend="cpp")
    b = mf.relation_kl(t, s, 4, mask.long(), backend="cpp")
    assert torch.equal(a, b)


def test_all_sequences_padded_gives_zero_and_zero_grads():
    t, s = features(2, 5, 8, 2, torch.float64), features(2, 5, 8, 2, torch.float64).requires_grad_()
    loss = mf.relation_kl(t, s, 2, torch.zeros(2, 5, dtype=torch.bool), backend="cpp")
    loss.backward()
    assert loss.item() == 0.0 and torch.count_nonzero(s.grad) == 0


def test_padded_rows_get_exactly_zero_gradient():
    t, s = features(2, 37, 96, 12, torch.float32), features(2, 37, 48, 12, torch.float32)
    t.requires_grad_()
    s.requires_grad_()
    mask = ragged(2, 37)
    mf.relation_kl(t, s, 12, mask, backend="cpp").backward()
    assert torch.count_nonzero(s.grad[~mask]) == 0 and torch.count_nonzero(t.grad[~mask]) == 0


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32], ids=["fp64", "fp32"])
def test_non_contiguous_inputs(dtype):
    B, L, splits = 3, 37, 12
    # teacher: a transposed (B, D, L) buffer; student: every other column of a wider one.
    t = features(B, 768, L, 1, dtype).mul((768 / 64) ** 0.25).transpose(1, 2)
    s = features(B, L, 2 * 312, 2 * splits, dtype)[..., ::2]
    assert not t.is_contiguous() and not s.is_contiguous()
    mask = ragged(B, L)
    check_against_reference(t, s, splits, mask, 1.7, teacher_grad=True)
    results = []
    for tt, ss in ((t, s), (t.contiguous(), s.contiguous())):
        tt, ss = tt.detach().requires_grad_(), ss.detach().requires_grad_()
        loss = mf.relation_kl(tt, ss, splits, mask, backend="cpp")
        loss.backward()
        results.append((loss, tt.grad, ss.grad))
    # Same values, only the strides differ: the kernels read strides, results are bitwise equal.
    assert all(torch.equal(a, b) for a, b in zip(*results))


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16], ids=["fp16", "bf16"])
def test_half_inputs_compute_in_fp32(dtype):
    B, L, splits = 2, 37, 12
    t = features(B, L, 768, splits, torch.float32).to(dtype).requires_grad_()
    s = features(B, L, 312, splits, torch.float32).to(dtype).requires_grad_()
    mask = ragged(B, L)
    loss = mf.relation_kl(t, s, splits, mask, backend="cpp")
    assert loss.dtype == torch.float32
    (2.0 * loss).backward()
    assert t.grad.dtype == dtype and s.grad.dtype == dtype
    t64, s64 = t.detach().double().requires_grad_(), s.detach().double().requires_grad_()
    ref = reference.relation_kl(t64, s64, splits, mask)
    (2.0 * ref).backward()
    # The same (rounded) inputs in fp64: the fp32 computation is exact to 1e-5; the
    # gradients are then rounded to the input dtype (8 or 11 mantissa bits).
    assert loss.item() == pytest.approx(ref.item(), rel=1e-5)
    rel = 2.0**-7 if dtype == torch.bfloat16 else 2.0**-10
    assert_close(s.grad, s64.grad, rel, "student grad")
    assert_close(t.grad, t64.grad, rel, "teacher grad")


def test_mixed_precision_pair_computes_in_fp64():
    t = features(2, 9, 24, 3, torch.float64)
    s = features(2, 9, 12, 3, torch.float32).requires_grad_()
    loss = mf.relation_kl(t, s, 3, None, backend="cpp")
    assert loss.dtype == torch.float64
    loss.backward()
    assert s.grad.dtype == torch.float32
    assert loss.item() == pytest.approx(reference.relation_kl(t, s.detach().double(), 3, None).item(), rel=1e-10)


def test_sample_relation_kl_matches_reference():
    for B in (1, 5, 70):
        t = torch.randn(B, 768, dtype=torch.float64) / 768**0.25 * 2**0.5
        s = (torch.randn(B, 312, dtype=torch.float64) / 312**0.25 * 2**0.5).requires_grad_()
        loss = mf.sample_relation_kl(t, s, backend="cpp")
        (3.0 * loss).backward()
        s64 = s.detach().clone().requires_grad_()
        ref = reference.sample_relation_kl(t, s64)
        (3.0 * ref).backward()
        assert loss.item() == pytest.approx(ref.item(), rel=1e-10, abs=1e-300)
        assert_close(s.grad, s64.grad, 1e-10, "student grad")


def test_gradcheck_fp64():
    t = features(2, 6, 8, 2, torch.float64).requires_grad_()
    s = features(2, 6, 4, 2, torch.float64).requires_grad_()
    mask = torch.tensor([[1, 1, 1, 0, 1, 0], [1, 1, 1, 1, 1, 1]], dtype=torch.bool)
    assert torch.autograd.gradcheck(lambda a, b: mf.relation_kl(a, b, 2, mask, backend="cpp"), (t, s))


def test_deterministic_with_two_threads():
    B, L, splits = 4, 129, 12
    t = features(B, L, 768, splits, torch.float32).requires_grad_()
    s = features(B, L, 312, splits, torch.float32).requires_grad_()
    mask = ragged(B, L)
    old = torch.get_num_threads()
    torch.set_num_threads(2)
    try:
        runs = []
        for _ in range(20):
            t.grad = s.grad = None
            loss = mf.relation_kl(t, s, splits, mask, backend="cpp")
            loss.backward()
            runs.append((loss.detach().clone(), t.grad.clone(), s.grad.clone()))
    finally:
        torch.set_num_threads(old)
    for r in runs[1:]:
        assert all(torch.equal(x, y) for x, y in zip(runs[0], r))


def test_deterministic_with_two_threads_few_sequences():
    """B * splits < 2 * threads: the threads share each sequence's tile pairs
    (per-thread row states / gradient buffers merged in thread order)."""
    old = torch.get_num_threads()
    torch.set_num_threads(2)
    try:
        for B, L, splits, mask in ((1, 300, 1, None), (3, 200, 1, ragged(3, 200))):
            t = features(B, L, 384, splits, torch.float32)
            s = features(B, L, 384, splits, torch.float32).requires_grad_()
            runs = []
            for _ in range(10):
                s.grad = None
                loss = mf.relation_kl(t, s, splits, mask, backend="cpp")
                loss.backward()
                runs.append((loss.detach().clone(), s.grad.clone()))
            for r in runs[1:]:
                assert all(torch.equal(x, y) for x, y in zip(runs[0], r))
    finally:
        torch.set_num_threads(old)


def test_baseline_isa_matches_avx2():
    """Both compiled instruction-set paths agree (the baseline one runs on CPUs without AVX2)."""
    C = backends.cpp_module()
    t = features(2, 70, 96, 12, torch.float32).requires_grad_()
    s = features(2, 70, 48, 12, torch.float32).requires_grad_()
    mask = ragged(2, 70)
    isa = C.cpu_isa()
    out = {}
    try:
        for name in ("base", isa):
            C.set_isa(name)
            t.grad = s.grad = None
            loss = mf.relation_kl(t, s, 12, mask, backend="cpp")
            loss.backward()
            out[name] = (loss.detach(), t.grad.clone(), s.grad.clone())
    finally:
        C.set_isa(isa)
    for a, b in zip(out["base"], out[isa]):
        assert_close(a, b, 1e-5, "base vs " + isa)


def test_auto_uses_cpp_on_cpu_tensors():
    t = features(2, 9, 24, 3, torch.float32)
    s = features(2, 9, 12, 3, torch.float32)
    assert torch.equal(mf.relation_kl(t, s, 3), mf.relation_kl(t, s, 3, backend="cpp"))
