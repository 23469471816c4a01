"""sample_relation_kl (L_SS, the B x B [CLS] relation) on every backend against the float64 reference."""
import naive
import pytest
import torch
from helpers import FP64, cases, check_op, tolerance

import mlkd_fast as mf


def op(backend, teacher, student):
    return mf.sample_relation_kl(teacher, student, backend=backend)


def cls_features(B, D, dtype, device, gen=None):
    return (torch.randn(B, D, dtype=FP64, generator=gen) * (2.0**0.5 / D**0.25)).to(device=device, dtype=dtype)


@pytest.mark.parametrize("backend,device,dtype,B,Dt,Ds", cases([(1, 16, 8), (5, 160, 72), (70, 160, 72)],
                                                             [(200, 768, 312), (1030, 384, 384)]))
def test_matches_reference(backend, device, dtype, B, Dt, Ds):
    t, s = cls_features(B, Dt, dtype, device), cls_features(B, Ds, dtype, device)
    check_op(backend, op, [t, s], [False, True], upstream=0.5 + 3 * torch.rand(()).item())


@pytest.mark.parametrize("backend,device,dtype", cases([()]))
def test_matches_python_loops_and_relation_of_one_sequence(backend, device, dtype):
    t, s = torch.randn(5, 6, dtype=FP64), torch.randn(5, 4, dtype=FP64)
    got = op(backend, t.to(device, dtype), s.to(device, dtype))
    rel = tolerance(backend, dtype)[0]
    assert got.item() == pytest.approx(naive.relation_kl(t[None], s[None], 1), rel=rel)
    same = mf.relation_kl(t[None].to(device, dtype), s[None].to(device, dtype), 1, backend=backend)
    assert got.item() == pytest.approx(same.item(), rel=rel)


@pytest.mark.parametrize("backend,device,dtype", cases([()], dtypes=(FP64,)))
def test_gradcheck(backend, device, dtype):
    t = cls_features(5, 6, dtype, device).requires_grad_()
    s = cls_features(5, 4, dtype, device).requires_grad_()
    assert torch.autograd.gradcheck(lambda a, b: op(backend, a, b), (t, s))
