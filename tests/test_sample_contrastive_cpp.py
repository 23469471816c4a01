"""backend="cpp" sample_contrastive against the float64 torch reference (fresh random inputs)."""
import pytest
import torch

import mlkd_fast as mf
from mlkd_fast import backends
from mlkd_fast.ops import reference

TOL = {torch.float64: 1e-10, torch.float32: 1e-5}


def rel_err(got, want):
    got, want = got.double(), want.double()
    return ((got - want).norm() / want.norm().clamp_min(1e-300)).item()


def run(fn, t, s, labels, tau, base, upstream):
    t = t.detach().requires_grad_()
    s = s.detach().requires_grad_()
    loss = fn(t, s, labels, tau, base)
    (loss * upstream).backward()
    return loss.detach(), t.grad, s.grad


def cpp(t, s, labels, tau, base):
    return mf.sample_contrastive(t, s, labels, temperature=tau, base_temperature=base, backend="cpp")


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32], ids=["fp64", "fp32"])
@pytest.mark.parametrize("B,D", [(1, 768), (2, 384), (7, 768), (40, 384), (70, 96)])
@pytest.mark.parametrize("labelled", [False, True])
def test_matches_reference(B, D, labelled, dtype):
    t, s = torch.randn(B, D, dtype=dtype), torch.randn(B, D, dtype=dtype)
    labels = torch.randint(0, 3, (B,)) if labelled else None
    tau, base = (0.07, 1.0) if B % 2 else (0.5, 0.07)
    upstream = 0.5 + 3 * torch.rand(()).item()
    loss, g_t, g_s = run(cpp, t, s, labels, tau, base, upstream)
    ref, r_t, r_s = run(reference.sample_contrastive, t.double(), s.double(), labels, tau, base, upstream)
    assert loss.dtype == dtype and loss.dim() == 0
    assert g_t.dtype == dtype and g_s.dtype == dtype
    assert loss.item() == pytest.approx(ref.item(), rel=TOL[dtype])
    assert rel_err(g_t, r_t) <= TOL[dtype] and rel_err(g_s, r_s) <= TOL[dtype]


def test_all_one_class():
    t, s = torch.randn(9, 64, dtype=torch.float64), torch.randn(9, 64, dtype=torch.float64)
    labels = torch.full((9,), 4)
    loss, g_t, g_s = run(cpp, t, s, labels, 0.07, 1.0, 1.0)
    ref, r_t, r_s = run(reference.sample_contrastive, t, s, labels, 0.07, 1.0, 1.0)
    assert loss.item() == pytest.approx(ref.item(), rel=1e-10)
    assert rel_err(g_t, r_t) <= 1e-10 and rel_err(g_s, r_s) <= 1e-10


def test_non_contiguous_inputs():
    t = torch.randn(768, 11).T  # (11, 768) with strides (1, 11)
    s = torch.randn(11, 2 * 768)[:, ::2]
    assert not t.is_contiguous() and not s.is_contiguous()
    labels = torch.randint(0, 2, (11,))
    a = run(cpp, t, s, labels, 0.07, 1.0, 2.0)
    b = run(cpp, t.contiguous(), s.contiguous(), labels, 0.07, 1.0, 2.0)
    ref = run(reference.sample_contrastive, t.double(), s.double(), labels, 0.07, 1.0, 2.0)
    # The L2 normalisation runs in torch, whose reduction order depends on the layout: close, not bitwise.
    assert all(rel_err(x, y) <= 1e-6 for x, y in zip(a, b))
    assert a[0].item() == pytest.approx(ref[0].item(), rel=1e-5)
    assert rel_err(a[1], ref[1]) <= 1e-5 and rel_err(a[2], ref[2]) <= 1e-5


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16], ids=["fp16", "bf16"])
def test_half_inputs(dtype):
    t, s = torch.randn(6, 128).to(dtype), torch.randn(6, 128).to(dtype)
    loss, g_t, g_s = run(cpp, t, s, None, 0.07, 1.0, 1.0)
    ref, r_t, r_s = run(reference.sample_contrastive, t.double(), s.double(), None, 0.07, 1.0, 1.0)
    assert loss.dtype == torch.float32 and g_t.dtype == dtype and g_s.dtype == dtype
    assert loss.item() == pytest.approx(ref.item(), rel=1e-5)
    rel = 2.0**-7 if dtype == torch.bfloat16 else 2.0**-10
    assert rel_err(g_t, r_t) <= rel and rel_err(g_s, r_s) <= rel


def test_gradcheck_fp64():
    t = torch.randn(4, 5, dtype=torch.float64, requires_grad=True)
    s = torch.randn(4, 5, dtype=torch.float64, requires_grad=True)
    labels = torch.tensor([0, 1, 0, 1])
    assert torch.autograd.gradcheck(lambda a, b: cpp(a, b, labels, 0.5, 1.0), (t, s))


def test_empty_batch_gives_zero():
    t, s = torch.randn(0, 8), torch.randn(0, 8)
    assert cpp(t, s, None, 0.07, 1.0).item() == 0.0


def test_deterministic_with_two_threads():
    t, s = torch.randn(70, 768), torch.randn(70, 768)
    labels = torch.randint(0, 3, (70,))
    old = torch.get_num_threads()
    torch.set_num_threads(2)
    try:
        runs = [run(cpp, t, s, labels, 0.07, 1.0, 1.0) for _ in range(20)]
    finally:
        torch.set_num_threads(old)
    for r in runs[1:]:
        assert all(torch.equal(x, y) for x, y in zip(runs[0], r))


def test_auto_uses_cpp_on_cpu_tensors():
    assert "cpp" in mf.available_backends(), backends.cpp_import_error()
    t, s = torch.randn(5, 32), torch.randn(5, 32)
    assert torch.equal(mf.sample_contrastive(t, s), cpp(t, s, None, 0.07, 1.0))
