"""The torch reference backend against independent Python loops, plus the
properties METHOD.md implies. Everything float64, fresh random inputs."""
import pytest
import torch

import mlkd_fast as mf
import naive



def rand(*shape, requires_grad=False):
    return torch.randn(*shape, dtype=torch.float64, requires_grad=requires_grad)


def ragged_mask(B, L, lengths):
    return torch.arange(L)[None, :] < torch.tensor(lengths)[:, None]


@pytest.mark.parametrize(
    "B,L,Dt,Ds,splits,lengths",
    [
        (2, 5, 6, 4, 2, None),
        (3, 4, 6, 6, 3, [4, 2, 0]),  # ragged with one fully padded sequence
        (1, 1, 4, 2, 1, None),
        (2, 6, 12, 6, 1, [3, 6]),
    ],
)
def test_relation_kl_matches_loops(B, L, Dt, Ds, splits, lengths):
    t, s = rand(B, L, Dt), rand(B, L, Ds)
    mask = None if lengths is None else ragged_mask(B, L, lengths)
    got = mf.relation_kl(t, s, splits, mask, backend="torch")
    want = naive.relation_kl(t, s, splits, mask)
    assert got.dtype == torch.float64 and got.dim() == 0
    assert got.item() == pytest.approx(want, rel=1e-10, abs=1e-12)


def test_sample_relation_matches_loops():
    t, s = rand(5, 6), rand(5, 4)
    got = mf.sample_relation_kl(t, s, backend="torch")
    assert got.item() == pytest.approx(naive.relation_kl(t[None], s[None], 1), rel=1e-10)


@pytest.mark.parametrize("labels", [None, [0, 1, 0, 2, 1], [3, 3, 3, 3, 3]])
@pytest.mark.parametrize("tau,base", [(0.07, 1.0), (0.5, 0.07)])
def test_sample_contrastive_matches_loops(labels, tau, base):
    t, s = rand(5, 7), rand(5, 7)
    lab = None if labels is None else torch.tensor(labels)
    got = mf.sample_contrastive(t, s, lab, temperature=tau, base_temperature=base, backend="torch")
    assert got.item() == pytest.approx(naive.sample_contrastive(t, s, lab, tau, base), rel=1e-10)


@pytest.mark.parametrize("reduction", ["batchmean", "mean", "none"])
@pytest.mark.parametrize("T", [1.0, 2.5])
def test_soft_cross_entropy_matches_loops(reduction, T):
    t, s = rand(4, 3), rand(4, 3)
    got = mf.soft_cross_entropy(t, s, temperature=T, reduction=reduction)
    want = naive.soft_cross_entropy(t, s, T, reduction)
    if reduction == "none":
        assert got.shape == (4,)
        assert got.tolist() == pytest.approx(want, rel=1e-10)
    else:
        assert got.item() == pytest.approx(want, rel=1e-10)


def test_kl_nonnegative_and_zero_for_identical_inputs():
    for _ in range(5):
        t, s = rand(2, 9, 12), rand(2, 9, 8)
        assert mf.relation_kl(t, s, 4, backend="torch").item() >= 0
        assert mf.relation_kl(t, t.clone(), 4, backend="torch").item() == pytest.approx(0.0, abs=1e-12)
    h = rand(6, 10)
    assert mf.sample_relation_kl(h, h.clone(), backend="torch").item() == pytest.approx(0.0, abs=1e-12)


def test_padded_positions_do_not_matter():
    B, L = 3, 8
    mask = ragged_mask(B, L, [5, 8, 2])
    t, s = rand(B, L, 12), rand(B, L, 6)
    base = mf.relation_kl(t, s, 3, mask, backend="torch")
    t2, s2 = t.clone(), s.clone()
    t2[~mask] = 1e3 * rand(int((~mask).sum()), 12)
    s2[~mask] = -7.0
    assert mf.relation_kl(t2, s2, 3, mask, backend="torch").item() == pytest.approx(base.item(), rel=1e-12)


def test_fully_padded_sequence_contributes_nothing():
    t, s = rand(2, 6, 12), rand(2, 6, 6)
    mask = ragged_mask(2, 6, [4, 6])
    alone = mf.relation_kl(t[:1], s[:1], 3, mask[:1], backend="torch")
    t3 = torch.cat([t[:1], rand(1, 6, 12)])
    s3 = torch.cat([s[:1], rand(1, 6, 6)])
    padded = torch.cat([mask[:1], torch.zeros(1, 6, dtype=torch.bool)])
    got = mf.relation_kl(t3, s3, 3, padded, backend="torch")
    assert got.item() == pytest.approx(alone.item(), rel=1e-12)


def test_zero_valid_rows_gives_zero_and_zero_grads():
    t, s = rand(2, 5, 6, requires_grad=True), rand(2, 5, 4, requires_grad=True)
    out = mf.relation_kl(t, s, 2, torch.zeros(2, 5, dtype=torch.int64), backend="torch")
    assert out.item() == 0.0
    out.backward()
    assert torch.all(t.grad == 0) and torch.all(s.grad == 0)
    assert torch.isfinite(t.grad).all() and torch.isfinite(s.grad).all()


def test_sample_relation_is_relation_of_one_sequence():
    t, s = rand(7, 12), rand(7, 8)
    a = mf.sample_relation_kl(t, s, backend="torch")
    b = mf.relation_kl(t[None], s[None], 1, backend="torch")
    assert a.item() == pytest.approx(b.item(), rel=1e-14)


def test_mask_accepts_bool_and_int():
    t, s = rand(2, 5, 6), rand(2, 5, 6)
    m = ragged_mask(2, 5, [3, 5])
    a = mf.relation_kl(t, s, 2, m, backend="torch")
    b = mf.relation_kl(t, s, 2, m.long(), backend="torch")
    assert a.item() == b.item()


def test_low_precision_inputs_accumulate_in_fp32():
    t, s = rand(2, 5, 8).to(torch.bfloat16), rand(2, 5, 4).half()
    out = mf.relation_kl(t, s, 2, backend="torch")
    assert out.dtype == torch.float32
    want = mf.relation_kl(t.double(), s.double(), 2, backend="torch")
    assert out.item() == pytest.approx(want.item(), rel=1e-5)


def test_noncontiguous_inputs():
    t = rand(6, 2, 12).transpose(0, 1)  # (2, 6, 12), non-contiguous
    s = rand(2, 6, 16)[..., ::2]
    assert not t.is_contiguous() and not s.is_contiguous()
    a = mf.relation_kl(t, s, 4, backend="torch")
    b = mf.relation_kl(t.contiguous(), s.contiguous(), 4, backend="torch")
    assert a.item() == pytest.approx(b.item(), rel=1e-14)


# --- gradcheck (float64, masks, both inputs differentiable) -------------------

def test_gradcheck_relation_kl():
    mask = ragged_mask(3, 5, [5, 2, 0])
    t, s = rand(3, 5, 6, requires_grad=True), rand(3, 5, 4, requires_grad=True)
    assert torch.autograd.gradcheck(lambda a, b: mf.relation_kl(a, b, 2, mask, backend="torch"), (t, s))


def test_gradcheck_sample_relation_kl():
    t, s = rand(5, 6, requires_grad=True), rand(5, 4, requires_grad=True)
    assert torch.autograd.gradcheck(lambda a, b: mf.sample_relation_kl(a, b, backend="torch"), (t, s))


@pytest.mark.parametrize("labels", [None, [1, 0, 1, 1]])
def test_gradcheck_sample_contrastive(labels):
    lab = None if labels is None else torch.tensor(labels)
    t, s = rand(4, 5, requires_grad=True), rand(4, 5, requires_grad=True)
    f = lambda a, b: mf.sample_contrastive(a, b, lab, temperature=0.3, backend="torch")  # noqa: E731
    assert torch.autograd.gradcheck(f, (t, s))


@pytest.mark.parametrize("reduction", ["batchmean", "mean", "none"])
def test_gradcheck_soft_cross_entropy(reduction):
    t, s = rand(3, 4, requires_grad=True), rand(3, 4, requires_grad=True)
    f = lambda a, b: mf.soft_cross_entropy(a, b, temperature=2.0, reduction=reduction)  # noqa: E731
    assert torch.autograd.gradcheck(f, (t, s))


def test_available_backends_lists_torch():
    assert "torch" in mf.available_backends()
