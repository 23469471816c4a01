"""The objectives besides MLKD (ft, kd, tinybert, minilmv2) and the authors' recipe choices: each new term on a
hand-checkable case, each objective's stages on tiny models, and the errors a user can meet."""
import math

import pytest
import torch
from tiny_bert import one_thread, tiny_bert, tokenized_dataset  # noqa: F401 (fixture)

from mlkd_fast import DistillConfig, build_student, distill
from mlkd_fast.ops import relation_kl
from mlkd_fast.train import checkpoint
from mlkd_fast.train import objectives as losses
from mlkd_fast.train.capture import capture_features
from mlkd_fast.train.config import OBJECTIVES, RECIPES, config_from_dict
from mlkd_fast.train.features import Features
from mlkd_fast.train.optim import BertAdam

pytestmark = pytest.mark.usefixtures("one_thread")


def _ctx(mask, **kw):
    return losses.LossContext(mask=mask, layer_map=kw.pop("layer_map", (1,)),
                              projections=losses.DistillProjections(1, 1, 1), **kw)


# ----------------------------------------------------------------------------- terms on hand-checkable cases


def test_hard_label_terms():
    s = Features(logits=torch.tensor([[0.0, 0.0], [2.0, 0.0]]))
    ce = losses.LOSSES["ce"](None, s, _ctx(torch.ones(2, 1, dtype=torch.bool), targets=torch.tensor([0, 1])))
    expected = (math.log(2) + math.log(1 + math.exp(2))) / 2  # -log softmax: log 2, and log(e^2 + 1) - 0
    assert ce.item() == pytest.approx(expected, rel=1e-6)
    reg = _ctx(torch.ones(2, 1, dtype=torch.bool), targets=torch.tensor([1.0, 3.0]), is_regression=True)
    s1 = Features(logits=torch.tensor([[0.0], [1.0]]))
    assert losses.LOSSES["ce"](None, s1, reg).item() == pytest.approx((1 + 4) / 2)
    assert losses.TERMS["ce"].teacher is False


def test_kd_term_reductions_and_hinton_scaling():
    t = Features(logits=torch.zeros(3, 2))
    s = Features(logits=torch.zeros(3, 2))
    mask = torch.ones(3, 1, dtype=torch.bool)
    # uniform teacher and student: the soft CE of each sample is log 2
    kd = losses.TERMS["kd"]
    assert kd(t, s, _ctx(mask), kd.make_settings({"reduction": "mean"})).item() == pytest.approx(math.log(2) / 2)
    hinton = kd.make_settings({"reduction": "batchmean", "temperature": 2.0})
    assert kd(t, s, _ctx(mask), hinton).item() == pytest.approx(4 * math.log(2))


def test_attention_score_term_by_hand():
    # one head of width 1: q = (1, 2), k = (3, 4) -> scores q_i k_j = [[3, 4], [6, 8]]; student scores 0
    q, k = torch.tensor([[[1.0], [2.0]]]), torch.tensor([[[3.0], [4.0]]])
    t = Features(qkv=[(q, k, k)], heads=1)
    s = Features(qkv=[(torch.zeros_like(q), k, k)], heads=1)
    full = losses.LOSSES["att"](t, s, _ctx(torch.ones(1, 2, dtype=torch.bool)))
    assert full.item() == pytest.approx((9 + 16 + 36 + 64) / 4)
    first_only = losses.LOSSES["att"](t, s, _ctx(torch.tensor([[True, False]])))
    assert first_only.item() == pytest.approx(9.0)  # padded queries and keys are left out
    assert losses.LOSSES["att"](t, t, _ctx(torch.ones(1, 2, dtype=torch.bool))).item() == 0.0


def test_attention_score_term_needs_equal_heads():
    x = torch.randn(1, 3, 4)
    with pytest.raises(ValueError, match="teacher has 2 heads, the student 1"):
        losses.LOSSES["att"](Features(qkv=[(x, x, x)], heads=2), Features(qkv=[(x, x, x)], heads=1),
                             _ctx(torch.ones(1, 3, dtype=torch.bool)))


def test_qkv_relation_term_is_the_three_relation_kls_of_the_chosen_layer():
    g = torch.Generator().manual_seed(0)
    r = lambda *s: torch.randn(*s, generator=g, dtype=torch.float64)  # noqa: E731
    t = Features(qkv=[tuple(r(2, 5, 8) for _ in range(3)) for _ in range(3)], heads=4)
    s = Features(qkv=[tuple(r(2, 5, 4) for _ in range(3)) for _ in range(2)], heads=1)
    mask = torch.tensor([[True] * 5, [True] * 3 + [False] * 2])
    ctx = _ctx(mask, splits=2, backend="torch")
    expected = sum(relation_kl(tx, sx, 2, mask, backend="torch") for tx, sx in zip(t.qkv[1], s.qkv[-1]))
    layer2 = losses.TERMS["qkv"].make_settings({"layer": 2})
    assert losses.LOSSES["qkv"](t, s, ctx, layer2).item() == pytest.approx(expected.item(), rel=1e-12)
    assert losses.LOSSES["qkv"](t, Features(qkv=[t.qkv[0], t.qkv[1]]), ctx, layer2).item() == pytest.approx(0.0, abs=1e-12)


def test_stage_needs_reads_only_what_the_active_terms_need():
    assert losses.stage_needs({"ce": 1.0}) == ({"token_embeddings": False, "mha": False, "qkv": False}, False)
    parts, teacher = losses.stage_needs({"ffn": 1.0, "att": 1.0})
    assert parts == {"token_embeddings": False, "mha": False, "qkv": True} and teacher
    parts, _ = losses.stage_needs({"emb": 0.0, "mha": 1.0, "ffn": 1.0})
    assert parts["mha"] and not parts["token_embeddings"]  # a term weighted 0 is not computed


# ----------------------------------------------------------------------------- recipe choices


def test_mha_before_dropout_equals_the_captured_output_in_eval_mode():
    model = tiny_bert(layers=2, hidden=32, heads=4).eval()
    batch = {k: v[:4] for k, v in _batch().items()}
    a = capture_features(model, batch)
    b = capture_features(model, batch, mha_before_dropout=True)
    mask = batch["attention_mask"].bool()
    for x, y in zip(a.mha, b.mha):
        assert torch.allclose(x[mask], y[mask], atol=1e-5)
    # train mode with dropout on the attention probabilities only: layer 1's W^O input changes, its context
    # recomputed before dropout does not (later layers' inputs carry the dropout of earlier ones)
    model.train()
    for name, module in model.named_modules():
        if isinstance(module, torch.nn.Dropout) and "attention.self" not in name:
            module.p = 0.0
    torch.manual_seed(0)
    c, d = capture_features(model, batch, mha_before_dropout=True), capture_features(model, batch)
    assert torch.allclose(c.mha[0][mask], b.mha[0][mask], atol=1e-5)
    assert not torch.allclose(d.mha[0][mask], b.mha[0][mask], atol=1e-3)


def test_bertadam_clips_each_tensor_and_has_no_bias_correction():
    p, q = torch.nn.Parameter(torch.tensor([1.0, 1.0])), torch.nn.Parameter(torch.tensor([2.0]))
    opt = BertAdam([{"params": [p], "weight_decay": 0.1}, {"params": [q], "weight_decay": 0.0}], lr=0.5, eps=0.0,
                   max_grad_norm=1.0)
    p.grad, q.grad = torch.tensor([3.0, 4.0]), torch.tensor([0.5])
    opt.step()
    g = torch.tensor([0.6, 0.8])  # p's gradient clipped to norm 1 on its own; q's (norm 0.5) untouched
    m, v = 0.1 * g, 0.001 * g * g  # no bias correction: m / sqrt(v) = 0.1 / sqrt(0.001) * sign(g)
    assert torch.allclose(p.detach(), torch.tensor([1.0, 1.0]) - 0.5 * (m / v.sqrt() + 0.1 * torch.tensor([1.0, 1.0])))
    assert torch.allclose(q.detach(), torch.tensor([2.0 - 0.5 * 0.1 / math.sqrt(0.001)]))


def test_projection_init_normal():
    torch.manual_seed(0)
    proj = losses.DistillProjections(64, 64, 2, init="normal")
    w = torch.cat([lin.weight.flatten() for lin in proj.hidden])
    assert abs(w.std().item() - 0.02) < 0.002 and all((lin.bias == 0).all() for lin in proj.hidden)
    assert proj.sc_map("ffn") is proj.hidden[-1] and proj.sc_map("fresh") is proj.contrastive


def test_authors_recipe_preset_and_explicit_fields_over_it():
    cfg = config_from_dict(DistillConfig, {"recipe": "authors", "optimizer": "adamw"})
    for name, value in RECIPES["authors"].items():
        assert getattr(cfg, name) == (value if name != "optimizer" else "adamw")
    with pytest.raises(ValueError, match="recipe must be one of"):
        config_from_dict(DistillConfig, {"recipe": "theirs"})


@pytest.mark.parametrize("values, match", [
    ({"objective": "distil"}, "objective must be one of"),
    ({"objective": "ft", "stage2_weights": {"kd": 1.0}}, "'kd' is not a stage-2 term of objective 'ft'"),
    ({"teacher_mode": "training"}, "teacher_mode must be one of"),
    ({"eval_every": -1}, "eval_every must be >= 0"),
    ({"drop_last": "yes"}, "drop_last must be true or false"),
])
def test_bad_recipe_fields(values, match):
    with pytest.raises((ValueError, TypeError), match=match):
        config_from_dict(DistillConfig, values)


# ----------------------------------------------------------------------------- objectives through distill()


def _batch():
    ds = tokenized_dataset(8)
    from mlkd_fast.data import Collator

    return Collator()([ds[i] for i in range(8)])


def _cfg(**kw):
    base = dict(stage1_epochs=1, stage2_epochs=2, batch_size=8, eval_batch_size=16, splits=4, learning_rate=5e-3,
                device="cpu")
    return DistillConfig(**dict(base, **kw))


@pytest.mark.parametrize("objective", sorted(OBJECTIVES))
def test_each_objective_runs_its_stages_and_terms(tmp_path, objective):
    teacher = tiny_bert(layers=4, hidden=32, heads=4)
    student = build_student(teacher, 2, num_heads=4 if objective == "tinybert" else 2)
    calls = []
    teacher.register_forward_hook(lambda *a: calls.append(1))
    res = distill(teacher, student, tokenized_dataset(16), eval_data=tokenized_dataset(8, seed=1),
                  config=_cfg(objective=objective), output_dir=str(tmp_path / "o"), backend="torch", progress=False)
    stages = sorted(OBJECTIVES[objective])
    expected = [1] * (1 in stages) + [2, 2]
    assert [h["stage"] for h in res.history] == expected
    for h in res.history:
        terms = set(OBJECTIVES[objective][h["stage"]])
        assert set(k for k in h if k not in ("stage", "epoch", "steps", "loss", "metrics")) == terms
        assert all(math.isfinite(h[t]) for t in terms)
    assert (len(calls) > 0) == (objective != "ft")  # plain fine-tuning never runs the teacher
    assert res.best_metric is not None


def test_tinybert_with_unequal_heads_fails_before_training(tmp_path):
    teacher = tiny_bert(layers=4, hidden=32, heads=4)
    student = build_student(teacher, 2, num_heads=2)
    with pytest.raises(ValueError, match="teacher has 4 heads and the student 2"):
        distill(teacher, student, tokenized_dataset(16), config=_cfg(objective="tinybert"),
                output_dir=str(tmp_path / "o"), progress=False)
    assert not (tmp_path / "o").exists()


def test_stage_not_in_the_objective_is_an_error(tmp_path):
    teacher = tiny_bert(layers=4, hidden=32, heads=4)
    with pytest.raises(ValueError, match="objective 'kd' has no stage 1"):
        distill(teacher, build_student(teacher, 2), tokenized_dataset(16), config=_cfg(objective="kd"),
                output_dir=str(tmp_path / "o"), stages=(1, 2), progress=False)


def test_authors_recipe_runs_and_reuses_the_stage1_projection(tmp_path):
    teacher = tiny_bert(layers=4, hidden=32, heads=4)
    student = build_student(teacher, 2, hidden_size=16, intermediate_size=32, num_heads=2, init="random")
    cfg = config_from_dict(DistillConfig, dict(recipe="authors", stage1_epochs=1, stage2_epochs=1, batch_size=6,
                                               splits=4, device="cpu"))
    res = distill(teacher, student, tokenized_dataset(16), eval_data=tokenized_dataset(8, seed=1), config=cfg,
                  output_dir=str(tmp_path / "o"), backend="torch", progress=False)
    assert [h["steps"] for h in res.history] == [2, 2]  # 16 rows, batches of 6: the partial batch is dropped
    saved = checkpoint.load_state(str(tmp_path / "o"), "distill")
    first = saved["modules"]["projections"]
    fresh = first["contrastive.weight"]
    assert abs(fresh.std().item() - 0.02) < 0.01  # normal init, and never trained: L_SC used W_N instead
    assert teacher.training  # the authors' teacher runs with dropout


def test_eval_every_evaluates_within_epochs_of_the_last_stage_and_keeps_the_best(tmp_path):
    import json

    teacher = tiny_bert(layers=4, hidden=32, heads=4)
    res = distill(teacher, build_student(teacher, 2, num_heads=2), tokenized_dataset(24),
                  eval_data=tokenized_dataset(8, seed=1), config=_cfg(eval_every=2), output_dir=str(tmp_path / "o"),
                  backend="torch", progress=False)
    saved = json.loads((tmp_path / "o" / "history.json").read_text())
    # 3 steps per epoch; stage 1 (steps 1-3) chooses nothing; stage 2 evaluates at global steps 4 and 8 within
    # its epochs (step 6 ends an epoch: evaluated there once, as every epoch end is)
    assert [(e["stage"], e["step"]) for e in saved["evals"]] == [(2, 4), (2, 8)]
    points = [e["metrics"]["accuracy"] for e in saved["evals"]] + [h["metrics"]["accuracy"] for h in res.history[1:]]
    assert res.best_metric == max(points) and saved["best"]["step"] in (4, 6, 8, 9)
