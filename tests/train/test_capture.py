"""Feature capture with hooks: shapes, agreement with the model's own outputs, eager == sdpa, gradients."""
import pytest
import torch
from tiny_bert import one_thread, tiny_bert  # noqa: F401 (fixture)

from mlkd_fast.train.capture import capture_features

pytestmark = pytest.mark.usefixtures("one_thread")


def _batch(seed=0, b=3, length=9):
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(5, 64, (b, length), generator=g)
    mask = torch.ones(b, length, dtype=torch.long)
    mask[0, 6:] = 0  # padding in one row
    ids[0, 6:] = 0
    return {"input_ids": ids, "attention_mask": mask, "token_type_ids": torch.zeros_like(ids)}


def test_features_shapes_and_values_match_the_model():
    model = tiny_bert(layers=3, hidden=32, heads=4).eval()
    batch = _batch()
    f = capture_features(model, batch)
    assert f.token_embeddings.shape == (3, 9, 32)
    assert len(f.mha) == 3 and all(m.shape == (3, 9, 32) for m in f.mha)
    assert len(f.hidden) == 4 and f.logits.shape == (3, 2)
    emb = model.bert.embeddings
    torch.testing.assert_close(f.token_embeddings, emb.LayerNorm(emb.word_embeddings(batch["input_ids"])))
    torch.testing.assert_close(f.hidden[0], emb(input_ids=batch["input_ids"], token_type_ids=batch["token_type_ids"]))
    torch.testing.assert_close(f.logits, model(**batch).logits)
    # O_n recomputed by hand: heads' softmax(QK^T/sqrt(d) + padding bias) V, concatenated
    layer, h = model.bert.encoder.layer[1], f.hidden[1]
    sa, heads, d = layer.attention.self, 4, 8
    q, k, v = (lin(h).view(3, 9, heads, d).transpose(1, 2) for lin in (sa.query, sa.key, sa.value))
    bias = (1 - batch["attention_mask"][:, None, None, :].float()) * -1e9
    o = torch.softmax(q @ k.transpose(-1, -2) / d**0.5 + bias, -1) @ v
    torch.testing.assert_close(f.mha[1], o.transpose(1, 2).reshape(3, 9, 32), atol=1e-5, rtol=1e-5)
    assert torch.equal(f.cls, f.hidden[-1][:, 0])


def test_eager_and_sdpa_capture_identical_features():
    sdpa = tiny_bert(layers=2, hidden=32, heads=4, attn="sdpa").eval()
    eager = tiny_bert(layers=2, hidden=32, heads=4, attn="eager").eval()
    eager.load_state_dict(sdpa.state_dict())
    assert sdpa.config._attn_implementation == "sdpa" and eager.config._attn_implementation == "eager"
    batch = _batch(1)
    a, b = capture_features(sdpa, batch), capture_features(eager, batch)
    valid = batch["attention_mask"].bool()
    torch.testing.assert_close(a.token_embeddings, b.token_embeddings)
    for x, y in zip(a.mha + a.hidden, b.mha + b.hidden):
        torch.testing.assert_close(x[valid], y[valid], atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(a.logits, b.logits, atol=1e-5, rtol=1e-5)


def test_stage2_capture_skips_mha_and_embeddings_and_hooks_are_removed():
    model = tiny_bert(layers=2).eval()
    f = capture_features(model, _batch(), mha=False, token_embeddings=False)
    assert f.mha == [] and f.token_embeddings is None and len(f.hidden) == 3
    assert all(not l.attention.output.dense._forward_pre_hooks for l in model.bert.encoder.layer)


def test_gradients_reach_the_student_through_captured_features():
    model = tiny_bert(layers=2).train()
    f = capture_features(model, _batch())
    (f.token_embeddings.sum() + f.mha[0].pow(2).sum()).backward()
    assert model.bert.embeddings.word_embeddings.weight.grad.abs().sum() > 0
    assert model.bert.encoder.layer[0].attention.self.query.weight.grad.abs().sum() > 0


def test_roberta_layout_is_supported():
    from transformers import RobertaConfig, RobertaForSequenceClassification

    torch.manual_seed(0)
    cfg = RobertaConfig(vocab_size=64, hidden_size=32, num_hidden_layers=2, num_attention_heads=2, intermediate_size=64,
                        max_position_embeddings=40, pad_token_id=1)
    model = RobertaForSequenceClassification(cfg).eval()
    batch = _batch()
    batch["input_ids"][0, 6:] = 1
    del batch["token_type_ids"]
    f = capture_features(model, batch)
    assert len(f.mha) == 2 and len(f.hidden) == 3 and f.logits.shape == (3, 2)


def test_non_bert_module_is_rejected():
    with pytest.raises(TypeError, match="not a transformers model"):
        capture_features(torch.nn.Linear(2, 2), _batch())
