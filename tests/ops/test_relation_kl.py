"""relation_kl (L_EMB, L_MHA) on every backend against the float64 eager reference, the Python-loop oracle
and the properties of the method. Fresh random inputs every run.

Interpreter shapes are small (every Triton program costs milliseconds there)
but cross every tile boundary: L = 70 is two 64-row blocks and two 64-key
tiles, d = 312 five 64-column chunks, d = 26 a padded 32-wide tile; the cpp
backend's 32-row tiles are crossed by L = 37 and 129.
"""
import naive
import pytest
import torch
from helpers import (
    BACKENDS,
    BF16,
    FP16,
    FP32,
    FP64,
    cases,
    check_op,
    features,
    gpu_only,
    ragged,
    tolerance,
)

import mlkd_fast as mf


def op(backend, teacher, student, splits, mask):
    return mf.relation_kl(teacher, student, splits, mask, backend=backend)


SMALL = [  # (B, L, Dt, Ds, splits, mask kind, teacher grad)
    (2, 17, 64, 32, 2, "ragged", False),
    (2, 70, 312, 312, 12, "ragged", True),
    (3, 70, 48, 26, 2, "holes", True),
    (1, 70, 312, 200, 1, None, True),
    (3, 1, 24, 26, 2, "ragged", True),
]
LARGE = [(3, L, 768, 312, 12, "ragged", True) for L in (2, 37, 129, 300)] + [
    (3, L, 384, 384, A, m, True) for L in (2, 129, 300) for A in (1, 12) for m in ("ragged", None)]


@pytest.mark.parametrize("backend,device,dtype,B,L,Dt,Ds,splits,mask_kind,teacher_grad", cases(SMALL, LARGE))
def test_matches_reference(backend, device, dtype, B, L, Dt, Ds, splits, mask_kind, teacher_grad):
    t, s = features(B, L, Dt, splits, dtype, device), features(B, L, Ds, splits, dtype, device)
    mask = None if mask_kind is None else ragged(B, L, holes=mask_kind == "holes", device=device)
    upstream = 0.5 + 3 * torch.rand(()).item()
    check_op(backend, lambda b, x, y: op(b, x, y, splits, mask), [t, s], [teacher_grad, True], upstream)


@pytest.mark.parametrize("backend,device,dtype", cases([()], dtypes=(FP16, BF16)))
def test_half_inputs(backend, device, dtype):
    """16-bit inputs: an fp32 loss, gradients in the input dtype."""
    t, s = features(2, 40, 96, 12, dtype, device), features(2, 40, 48, 12, dtype, device)
    mask = ragged(2, 40, device=device)
    check_op(backend, lambda b, x, y: op(b, x, y, 12, mask), [t, s], [True, True], 2.0)


@pytest.mark.parametrize("backend,device,dtype,B,L,Dt,Ds,splits,lengths", cases([
    (2, 5, 6, 4, 2, None), (3, 4, 6, 6, 3, (4, 2, 0)), (1, 1, 4, 2, 1, None), (2, 6, 12, 6, 1, (3, 6))]))
def test_matches_python_loops(backend, device, dtype, B, L, Dt, Ds, splits, lengths):
    t, s = torch.randn(B, L, Dt, dtype=FP64), torch.randn(B, L, Ds, dtype=FP64)
    mask = None if lengths is None else torch.arange(L)[None, :] < torch.tensor(lengths)[:, None]
    got = op(backend, t.to(device, dtype), s.to(device, dtype), splits, None if mask is None else mask.to(device))
    rel, abs_, _ = tolerance(backend, dtype)
    assert got.item() == pytest.approx(naive.relation_kl(t, s, splits, mask), rel=rel, abs=max(abs_, 1e-12))


@pytest.mark.parametrize("backend,device,dtype", cases([()]))
def test_kl_is_nonnegative_and_zero_for_identical_inputs(backend, device, dtype):
    for _ in range(3):
        t, s = features(2, 9, 12, 4, dtype, device), features(2, 9, 8, 4, dtype, device)
        assert op(backend, t, s, 4, None).item() >= 0
        assert op(backend, t, t.clone(), 4, None).item() == pytest.approx(0.0, abs=1e-6 if dtype == FP32 else 1e-12)


@pytest.mark.parametrize("backend,device,dtype", cases([()]))
def test_padded_positions_do_not_matter(backend, device, dtype):
    mask = (torch.arange(8)[None, :] < torch.tensor([5, 8, 2])[:, None]).to(device)
    t, s = features(3, 8, 12, 3, dtype, device), features(3, 8, 6, 3, dtype, device)
    base = op(backend, t, s, 3, mask)
    t2, s2 = t.clone(), s.clone()
    t2[~mask] = 1e2 * torch.randn(int((~mask).sum()), 12, dtype=dtype, device=device)
    s2[~mask] = -7.0
    assert op(backend, t2, s2, 3, mask).item() == pytest.approx(base.item(), rel=tolerance(backend, dtype)[0])


@pytest.mark.parametrize("backend,device,dtype", cases([()]))
def test_fully_padded_sequence_contributes_nothing(backend, device, dtype):
    t, s = features(2, 6, 12, 3, dtype, device), features(2, 6, 6, 3, dtype, device)
    mask = torch.tensor([[1, 1, 1, 1, 0, 0], [0] * 6], dtype=torch.bool, device=device)
    alone = op(backend, t[:1], s[:1], 3, mask[:1])
    assert op(backend, t, s, 3, mask).item() == pytest.approx(alone.item(), rel=tolerance(backend, dtype)[0])


@pytest.mark.parametrize("backend,device,dtype", cases([()]))
def test_no_valid_row_gives_zero_and_zero_grads(backend, device, dtype):
    t = features(2, 5, 8, 2, dtype, device).requires_grad_()
    s = features(2, 5, 8, 2, dtype, device).requires_grad_()
    loss = op(backend, t, s, 2, torch.zeros(2, 5, dtype=torch.int64, device=device))
    loss.backward()
    assert loss.item() == 0.0
    assert torch.count_nonzero(s.grad) == 0 and torch.count_nonzero(t.grad) == 0


@pytest.mark.parametrize("backend,device,dtype", cases([()], dtypes=(FP32,)))
def test_padded_rows_get_exactly_zero_gradient(backend, device, dtype):
    t = features(3, 37, 96, 12, dtype, device).requires_grad_()
    s = features(3, 37, 48, 12, dtype, device).requires_grad_()
    mask = ragged(3, 37, device=device)
    op(backend, t, s, 12, mask).backward()
    assert torch.count_nonzero(s.grad[~mask]) == 0 and torch.count_nonzero(t.grad[~mask]) == 0


@pytest.mark.parametrize("backend,device,dtype", cases([()]))
def test_strided_inputs_and_int_mask_equal_contiguous_and_bool(backend, device, dtype):
    """The kernels read any strides: a transposed teacher and a column-strided student give the same bits."""
    t = features(2, 96, 40, 1, dtype, device).transpose(1, 2)  # (2, 40, 96), strides (., 1, 40)
    s = features(2, 40, 64, 4, dtype, device)[..., ::2]  # (2, 40, 32), column stride 2
    assert not t.is_contiguous() and not s.is_contiguous()
    mask = ragged(2, 40, device=device)
    runs = []
    for tt, ss, m in ((t, s, mask.to(torch.int32)), (t.contiguous(), s.contiguous(), mask)):
        tt, ss = tt.detach().requires_grad_(), ss.detach().requires_grad_()
        loss = op(backend, tt, ss, 4, m)
        loss.backward()
        runs.append((loss, tt.grad, ss.grad))
    for a, b in zip(*runs):
        if backend == "torch":  # eager matmuls may order their sums by layout
            assert torch.allclose(a, b, rtol=1e-5, atol=1e-7)
        else:
            assert torch.equal(a, b)


@pytest.mark.parametrize("backend,device,dtype", cases([()], dtypes=(FP32,)))
def test_repeated_runs_are_bitwise_equal(backend, device, dtype):
    t, s = features(2, 70, 64, 2, dtype, device), features(2, 70, 32, 2, dtype, device).requires_grad_()
    mask = ragged(2, 70, device=device)
    runs = []
    for _ in range(3):
        s.grad = None
        loss = op(backend, t, s, 2, mask)
        loss.backward()
        runs.append((loss.detach(), s.grad.clone()))
    assert all(torch.equal(x, y) for r in runs[1:] for x, y in zip(runs[0], r))


@pytest.mark.parametrize("backend,device,dtype", cases([()], dtypes=(FP64,)))
def test_gradcheck(backend, device, dtype):
    t = features(3, 5, 6, 2, dtype, device).requires_grad_()
    s = features(3, 5, 4, 2, dtype, device).requires_grad_()
    mask = torch.tensor([[1, 1, 1, 1, 1], [1, 1, 0, 1, 0], [0] * 5], dtype=torch.bool, device=device)
    assert torch.autograd.gradcheck(lambda a, b: op(backend, a, b, 2, mask), (t, s))


@pytest.mark.parametrize("backend,device", BACKENDS)
def test_mixed_precision_pair(backend, device):
    """fp64 with fp32 computes in fp64 (Triton takes no fp64 at all and says so)."""
    t, s = features(2, 9, 24, 3, FP64, device), features(2, 9, 12, 3, FP32, device).requires_grad_()
    if backend == "triton":
        with pytest.raises(TypeError, match="fp32, fp16 or bf16"):
            op(backend, t, s, 3, None)
        return
    loss = op(backend, t, s, 3, None)
    loss.backward()
    assert loss.dtype == FP64 and s.grad.dtype == FP32
    assert loss.item() == pytest.approx(op("torch", t, s.detach().double(), 3, None).item(), rel=1e-10)


# ----------------------------------------------------------------------------- GPU only


@pytest.mark.parametrize("dtype", [BF16, FP16, FP32])
@pytest.mark.parametrize("device", [pytest.param("cuda", marks=gpu_only)])
def test_triton_headline_shape(device, dtype):
    """The kernel issue's shape: BERT-base teacher (768) and 4L-312 student, 12 splits, L = 512."""
    t, s = features(4, 512, 768, 12, dtype, device), features(4, 512, 312, 12, dtype, device)
    mask = ragged(4, 512, device=device)
    check_op("triton", lambda b, x, y: op(b, x, y, 12, mask), [t, s], [True, True])


@pytest.mark.parametrize("device", [pytest.param("cuda", marks=gpu_only)])
def test_triton_long_sequence(device):
    """L = 16384: the float64 reference still fits an 80 GB GPU for one split of one sequence."""
    t, s = features(1, 16384, 64, 1, BF16, device), features(1, 16384, 32, 1, BF16, device)
    mask = ragged(1, 16384, device=device)
    check_op("triton", lambda b, x, y: op(b, x, y, 1, mask), [t, s], [False, True])
