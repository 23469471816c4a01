"""Stage objectives: registry, weights, layer map, hidden-state MSE, projections."""
import pytest
import torch

import mlkd_fast as mf
from mlkd_fast.train import objectives as losses
from mlkd_fast.train.features import Features
from mlkd_fast.train.layer_map import resolve_layer_map, uniform_layer_map


def _numbers(result):
    """stage_loss's values are 0-dim tensors: as floats for the comparisons."""
    total, terms = result
    return total, {k: float(v) for k, v in terms.items()}


def features(B, L, D, layers, C, seed):
    g = torch.Generator().manual_seed(seed)
    r = lambda *s: torch.randn(*s, generator=g, dtype=torch.float64)  # noqa: E731
    return Features(
        token_embeddings=r(B, L, D),
        mha=[r(B, L, D) for _ in range(layers)],
        hidden=[r(B, L, D) for _ in range(layers + 1)],
        logits=r(B, C),
    )


def context(B, L, Ds, Dt, N, layer_map, **kw):
    proj = losses.DistillProjections(Ds, Dt, N).double()
    mask = torch.arange(L)[None] < torch.tensor([L, L - 2, 1][:B])[:, None]
    return losses.LossContext(mask=mask, layer_map=layer_map, projections=proj, **kw)


def test_layer_maps():
    assert uniform_layer_map(12, 4) == (3, 6, 9, 12)
    assert uniform_layer_map(6, 3) == (2, 4, 6)
    assert resolve_layer_map(None, 6, 2) == (3, 6)
    assert resolve_layer_map([1, 4, 5], 5, 3) == (1, 4, 5)
    with pytest.raises(ValueError, match="not a multiple"):
        uniform_layer_map(5, 3)
    with pytest.raises(ValueError, match="strictly increasing"):
        resolve_layer_map([2, 2], 6, 2)
    with pytest.raises(ValueError, match=r"in 1\.\.6"):
        resolve_layer_map([3, 7], 6, 2)
    with pytest.raises(ValueError, match="one teacher layer per student layer"):
        resolve_layer_map([3], 6, 2)


def test_stage1_is_the_weighted_sum_of_its_terms():
    t, s = features(3, 6, 12, 4, 2, 0), features(3, 6, 8, 2, 2, 1)
    ctx = context(3, 6, 8, 12, 2, (2, 4), splits=4, backend="torch")
    total, terms = _numbers(losses.stage_loss(losses.stage_weights(1, {"mha": 0.5, "ffn": 2.0}), t, s, ctx))
    assert set(terms) == {"emb", "mha", "ffn"}
    assert total.item() == pytest.approx(terms["emb"] + 0.5 * terms["mha"] + 2.0 * terms["ffn"], rel=1e-12)
    # The MHA term is the sum over mapped layer pairs of relation_kl.
    want = sum(mf.relation_kl(t.mha[m - 1], s.mha[n], 4, ctx.mask, backend="torch") for n, m in enumerate((2, 4)))
    assert terms["mha"] == pytest.approx(want.item(), rel=1e-12)
    # The embedding term uses one split.
    assert terms["emb"] == pytest.approx(mf.relation_kl(t.token_embeddings, s.token_embeddings, 1, ctx.mask).item(), rel=1e-12)


def test_stage1_hidden_mse_uses_projection_and_mask():
    t, s = features(3, 6, 12, 4, 2, 0), features(3, 6, 8, 2, 2, 1)
    ctx = context(3, 6, 8, 12, 2, (2, 4), splits=4)
    _, terms = _numbers(losses.stage_loss({"ffn": 1.0}, t, s, ctx))
    m = ctx.mask
    want = 0.0
    for n, tm in enumerate((0, 2, 4)):
        pred = ctx.projections.hidden[n](s.hidden[n])
        diff = (pred - t.hidden[tm])[m]
        want += float((diff**2).mean().detach())
    assert terms["ffn"] == pytest.approx(want, rel=1e-6)


def test_stage2_terms_and_regression_variant():
    t, s = features(3, 5, 12, 2, 3, 2), features(3, 5, 8, 1, 3, 3)
    labels = torch.tensor([0, 2, 0])
    ctx = context(3, 5, 8, 12, 1, (2,), labels=labels, backend="torch")
    total, terms = _numbers(losses.stage_loss(losses.stage_weights(2), t, s, ctx))
    assert set(terms) == {"ss", "sc", "kd"}
    assert terms["ss"] == pytest.approx(mf.sample_relation_kl(t.cls, s.cls).item(), rel=1e-12)
    z = ctx.projections.contrastive(s.cls)
    assert terms["sc"] == pytest.approx(mf.sample_contrastive(t.cls, z, labels).item(), rel=1e-12)
    assert terms["kd"] == pytest.approx(mf.soft_cross_entropy(t.logits, s.logits, reduction="mean").item(), rel=1e-12)
    assert total.item() == pytest.approx(sum(terms.values()), rel=1e-12)

    t1, s1 = features(3, 5, 12, 2, 1, 4), features(3, 5, 8, 1, 1, 5)
    reg = context(3, 5, 8, 12, 1, (2,), labels=None, is_regression=True)  # positives: the other view only
    _, terms = _numbers(losses.stage_loss({"sc": 1.0, "kd": 1.0}, t1, s1, reg))
    z = reg.projections.contrastive(s1.cls)
    assert terms["sc"] == pytest.approx(mf.sample_contrastive(t1.cls, z, None).item(), rel=1e-12)
    assert terms["kd"] == pytest.approx(float(((t1.logits - s1.logits) ** 2).mean()), rel=1e-12)


def test_weights_are_checked():
    with pytest.raises(ValueError, match="not a stage-1 term"):
        losses.stage_weights(1, {"kd": 1.0})
    with pytest.raises(ValueError, match=r"stage must be one of \[1, 2\]"):
        losses.stage_weights(3)
    t, s = features(1, 3, 4, 1, 2, 0), features(1, 3, 4, 1, 2, 1)
    ctx = context(1, 3, 4, 4, 1, (1,))
    with pytest.raises(ValueError, match="unknown loss"):
        losses.stage_loss({"nope": 1.0}, t, s, ctx)
    with pytest.raises(ValueError, match="every loss weight is 0"):
        losses.stage_loss({"emb": 0.0}, t, s, ctx)


def test_projection_starts_as_identity_for_equal_widths():
    p = losses.DistillProjections(6, 6, 2)
    x = torch.randn(2, 3, 6)
    assert torch.allclose(p.hidden[1](x), x)
    assert len(p.hidden) == 3


def test_stage_loss_backpropagates_to_student_and_projections():
    t, s = features(2, 4, 8, 2, 2, 0), features(2, 4, 4, 1, 2, 1)
    for f in (s.token_embeddings, *s.mha, *s.hidden, s.logits):
        f.requires_grad_(True)
    ctx = context(2, 4, 4, 8, 1, (2,), splits=2, labels=torch.tensor([0, 1]))
    total1, _ = losses.stage_loss(losses.stage_weights(1), t, s, ctx)
    total2, _ = losses.stage_loss(losses.stage_weights(2), t, s, ctx)
    (total1 + total2).backward()
    assert s.token_embeddings.grad.abs().sum() > 0 and s.mha[0].grad.abs().sum() > 0
    assert all(p.grad is not None for p in ctx.projections.parameters())
