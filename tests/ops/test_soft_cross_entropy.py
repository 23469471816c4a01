"""soft_cross_entropy (L_KD): a (B, C) problem with one torch implementation for every device."""
import naive
import pytest
import torch

import mlkd_fast as mf


@pytest.mark.parametrize("reduction", ["batchmean", "mean", "none"])
@pytest.mark.parametrize("T", [1.0, 2.5])
def test_matches_python_loops(reduction, T):
    t, s = torch.randn(4, 3, dtype=torch.float64), torch.randn(4, 3, dtype=torch.float64)
    got = mf.soft_cross_entropy(t, s, temperature=T, reduction=reduction)
    want = naive.soft_cross_entropy(t, s, T, reduction)
    if reduction == "none":
        assert got.shape == (4,) and got.tolist() == pytest.approx(want, rel=1e-10)
    else:
        assert got.dim() == 0 and got.item() == pytest.approx(want, rel=1e-10)


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_half_logits_accumulate_in_fp32(dtype):
    t, s = torch.randn(5, 3).to(dtype), torch.randn(5, 3).to(dtype)
    got = mf.soft_cross_entropy(t, s)
    assert got.dtype == torch.float32
    assert got.item() == pytest.approx(mf.soft_cross_entropy(t.double(), s.double()).item(), rel=1e-6)


@pytest.mark.parametrize("reduction", ["batchmean", "mean", "none"])
def test_gradcheck(reduction):
    t = torch.randn(3, 4, dtype=torch.float64, requires_grad=True)
    s = torch.randn(3, 4, dtype=torch.float64, requires_grad=True)
    f = lambda a, b: mf.soft_cross_entropy(a, b, temperature=2.0, reduction=reduction)  # noqa: E731
    assert torch.autograd.gradcheck(f, (t, s))
