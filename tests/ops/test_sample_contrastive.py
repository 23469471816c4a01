"""sample_contrastive (L_SC) on every backend against the float64 reference and the Python-loop oracle.

N = 2B = 80 anchors cross the 64-row/64-column Triton tiles and the 32-row
cpp tiles; D = 312 and 768 cross the 64-wide head chunks.
"""
import naive
import pytest
import torch
from helpers import BF16, FP16, FP32, FP64, cases, check_op, tolerance

import mlkd_fast as mf


def op(backend, teacher, student, labels=None, tau=0.07, base=1.0):
    return mf.sample_contrastive(teacher, student, labels, temperature=tau, base_temperature=base, backend=backend)


def labels_of(kind, B, device):
    """None (regression: the other view is the only positive), three classes, or one class for all."""
    if kind is None:
        return None
    labels = torch.randint(0, 3, (B,)) if kind == "3" else torch.full((B,), 7)
    return labels.to(device)


SMALL = [(1, 16, None, 0.07, 1.0), (5, 20, "3", 0.07, 1.0), (40, 312, "3", 0.07, 1.0), (40, 100, None, 0.5, 0.07),
         (9, 768, "3", 1.0, 1.0), (6, 24, "same", 0.07, 1.0)]
LARGE = [(B, D, lab, 0.07, 1.0) for B in (70, 300) for D in (96, 768) for lab in (None, "3")]


@pytest.mark.parametrize("backend,device,dtype,B,D,labels,tau,base", cases(SMALL, LARGE))
def test_matches_reference(backend, device, dtype, B, D, labels, tau, base):
    t, s = torch.randn(B, D).to(device, dtype), torch.randn(B, D).to(device, dtype)
    lab = labels_of(labels, B, device)
    check_op(backend, lambda b, x, y: op(b, x, y, lab, tau, base), [t, s], [True, True],
             upstream=-0.6 + 3 * torch.rand(()).item())


@pytest.mark.parametrize("backend,device,dtype", cases([()], dtypes=(FP16, BF16)))
def test_half_inputs(backend, device, dtype):
    t, s = torch.randn(6, 128).to(device, dtype), torch.randn(6, 128).to(device, dtype)
    check_op(backend, op, [t, s], [True, True])


@pytest.mark.parametrize("backend,device,dtype,labels", cases([(None,), ((0, 1, 0, 2, 1),), ((3, 3, 3, 3, 3),)]))
@pytest.mark.parametrize("tau,base", [(0.07, 1.0), (0.5, 0.07)])
def test_matches_python_loops(backend, device, dtype, labels, tau, base):
    t, s = torch.randn(5, 7, dtype=FP64), torch.randn(5, 7, dtype=FP64)
    lab = None if labels is None else torch.tensor(labels)
    got = op(backend, t.to(device, dtype), s.to(device, dtype), None if lab is None else lab.to(device), tau, base)
    assert got.item() == pytest.approx(naive.sample_contrastive(t, s, lab, tau, base), rel=tolerance(backend, dtype)[0])


@pytest.mark.parametrize("backend,device,dtype", cases([()], dtypes=(FP32,)))
def test_strided_inputs(backend, device, dtype):
    t = torch.randn(768, 11).T.to(device)  # (11, 768), strides (1, 11)
    s = torch.randn(11, 2 * 768)[:, ::2].to(device)
    assert not t.is_contiguous() and not s.is_contiguous()
    lab = torch.randint(0, 2, (11,)).to(device)
    check_op(backend, lambda b, x, y: op(b, x, y, lab), [t, s], [True, True], upstream=2.0)


@pytest.mark.parametrize("backend,device,dtype", cases([()]))
def test_empty_batch_gives_zero(backend, device, dtype):
    t = torch.zeros(0, 8, dtype=dtype, device=device, requires_grad=True)
    loss = op(backend, t, t)
    loss.backward()
    assert loss.item() == 0.0 and t.grad.shape == (0, 8)


@pytest.mark.parametrize("backend,device,dtype", cases([()], dtypes=(FP32,)))
def test_repeated_runs_are_bitwise_equal(backend, device, dtype):
    t, s = torch.randn(70, 96).to(device), torch.randn(70, 96).to(device)
    lab = torch.randint(0, 3, (70,)).to(device)
    runs = []
    for _ in range(3):
        tt, ss = t.clone().requires_grad_(), s.clone().requires_grad_()
        loss = op(backend, tt, ss, lab)
        loss.backward()
        runs.append((loss.detach(), tt.grad, ss.grad))
    assert all(torch.equal(x, y) for r in runs[1:] for x, y in zip(runs[0], r))


@pytest.mark.parametrize("backend,device,dtype,labels", cases([(None,), ((1, 0, 1, 1),)], dtypes=(FP64,)))
def test_gradcheck(backend, device, dtype, labels):
    lab = None if labels is None else torch.tensor(labels, device=device)
    t = torch.randn(4, 5, dtype=dtype, device=device, requires_grad=True)
    s = torch.randn(4, 5, dtype=dtype, device=device, requires_grad=True)
    assert torch.autograd.gradcheck(lambda a, b: op(backend, a, b, lab, 0.3), (t, s))
