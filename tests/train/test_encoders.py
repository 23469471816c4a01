"""Encoder families on tiny random configs: capture finds every feature with the right shapes, every loss term
is finite, a two-stage distillation runs, and the student reloads with from_pretrained; an unknown layout
is an error naming the missing module."""
import math

import pytest
import torch
from tiny_bert import VOCAB, one_thread, tokenized_dataset  # noqa: F401 (fixture)

from mlkd_fast import DistillConfig, build_student, distill
from mlkd_fast.data import Collator
from mlkd_fast.train import objectives as losses
from mlkd_fast.train.capture import capture_features
from mlkd_fast.train.encoders import EncoderPaths, encoder_layout, register_encoder

pytestmark = pytest.mark.usefixtures("one_thread")
H, LAYERS, HEADS, FFN = 32, 4, 4, 64


def _config(family: str):
    import transformers as tf

    common = dict(vocab_size=VOCAB, num_labels=2, pad_token_id=0)
    bertish = dict(hidden_size=H, num_hidden_layers=LAYERS, num_attention_heads=HEADS, intermediate_size=FFN,
                   max_position_embeddings=64)
    if family == "bert":
        return tf.BertConfig(**bertish, **common)
    if family == "roberta":
        return tf.RobertaConfig(**bertish, **common)
    if family == "xlm-roberta":
        return tf.XLMRobertaConfig(**bertish, **common)
    if family == "electra":
        return tf.ElectraConfig(embedding_size=H, **bertish, **common)
    if family == "distilbert":
        return tf.DistilBertConfig(dim=H, n_layers=LAYERS, n_heads=HEADS, hidden_dim=FFN, max_position_embeddings=64,
                                   **common)
    if family == "deberta-v2":
        return tf.DebertaV2Config(relative_attention=True, pos_att_type=["p2c", "c2p"], position_buckets=8,
                                  max_relative_positions=16, **bertish, **common)
    if family == "modernbert":
        return tf.ModernBertConfig(hidden_size=H, num_hidden_layers=LAYERS, num_attention_heads=HEADS,
                                   intermediate_size=FFN, max_position_embeddings=64, global_attn_every_n_layers=2,
                                   local_attention=8, **common)
    raise AssertionError(family)


# ModernBERT's first layer has no attention norm, so student layer 1 must come from teacher layer 1
LAYER_MAP = {"modernbert": (1, 4)}
FAMILIES = ["bert", "roberta", "xlm-roberta", "electra", "distilbert", "deberta-v2", "modernbert"]


def _model(family: str, seed=0):
    from transformers import AutoModelForSequenceClassification

    torch.manual_seed(seed)
    cfg = _config(family)
    cfg._attn_implementation = "eager" if family in ("deberta-v2", "modernbert") else "sdpa"
    return AutoModelForSequenceClassification.from_config(cfg).eval()


def _batch():
    ds = tokenized_dataset(6, max_len=10)
    batch = Collator()([ds[i] for i in range(6)])
    return batch


@pytest.mark.parametrize("family", FAMILIES)
def test_capture_shapes_and_every_term_is_finite(family):
    teacher = _model(family)
    student = build_student(teacher, 2, num_heads=2, init="teacher", layer_map=LAYER_MAP.get(family))
    assert encoder_layout(student).heads == 2 and len(encoder_layout(student).layers) == 2
    batch = _batch()
    B, L = batch["input_ids"].shape
    t = capture_features(teacher, batch, qkv=True)
    s = capture_features(student, batch, qkv=True)
    assert t.token_embeddings.shape == (B, L, H) and len(t.mha) == LAYERS and len(t.hidden) == LAYERS + 1
    assert all(x.shape == (B, L, H) for x in t.mha + t.hidden + [q for trio in t.qkv for q in trio])
    assert len(s.mha) == 2 and s.logits.shape == (B, 2) and t.cls.shape == (B, H)
    ctx = losses.LossContext(mask=batch["attention_mask"].bool(), layer_map=LAYER_MAP.get(family, (2, 4)),
                             projections=losses.DistillProjections(H, H, 2), labels=batch["labels"],
                             targets=batch["labels"], splits=4, backend="torch")
    layer3 = {"qkv": losses.TERMS["qkv"].make_settings({"layer": 3})}
    for name in ("emb", "mha", "ffn", "ss", "sc", "kd", "ce", "qkv"):
        value = losses.LOSSES[name](t, s, ctx, layer3.get(name))
        assert value.dim() == 0 and math.isfinite(value.item()), name
    same_heads = build_student(teacher, 2, init="teacher", layer_map=LAYER_MAP.get(family))
    att = losses.LOSSES["att"](t, capture_features(same_heads, batch, qkv=True), ctx)
    assert math.isfinite(att.item())


@pytest.mark.parametrize("family", FAMILIES)
def test_two_stage_distillation_and_reload(tmp_path, family):
    from transformers import AutoModelForSequenceClassification

    teacher = _model(family)
    student = build_student(teacher, 2, num_heads=2, init="teacher", layer_map=LAYER_MAP.get(family))
    cfg = DistillConfig(layer_map=LAYER_MAP.get(family), stage1_epochs=1, stage2_epochs=1, batch_size=8, eval_batch_size=8, splits=4, max_seq_length=32,
                        device="cpu")
    res = distill(teacher, student, tokenized_dataset(16), eval_data=tokenized_dataset(8, seed=1), config=cfg,
                  output_dir=str(tmp_path / "o"), backend="torch", progress=False)
    assert [h["stage"] for h in res.history] == [1, 2]
    assert all(math.isfinite(v) for h in res.history for v in h.values() if isinstance(v, float))
    reloaded = AutoModelForSequenceClassification.from_pretrained(res.student_dir).eval()
    assert type(reloaded) is type(student) and reloaded.config.num_attention_heads == 2
    batch = {k: v for k, v in _batch().items() if k != "labels"}
    from mlkd_fast.train.models import model_inputs

    student.eval()
    with torch.no_grad():
        assert reloaded(**model_inputs(reloaded, batch)).logits.shape == (6, 2)


def test_before_dropout_refused_where_attention_is_not_plain():
    model = _model("deberta-v2")
    with pytest.raises(ValueError, match="relative-position or rotary"):
        capture_features(model, _batch(), mha_before_dropout=True)


def test_unknown_layout_names_the_missing_module_and_how_to_register():
    from transformers import BertConfig, BertForSequenceClassification

    model = BertForSequenceClassification(BertConfig(vocab_size=VOCAB, hidden_size=H, num_hidden_layers=1,
                                                     num_attention_heads=HEADS, intermediate_size=FFN))
    model.config.model_type = "my-encoder"
    register_encoder("my-encoder", EncoderPaths("embeddings.word_embeddings", "embeddings.norm", "encoder.layer",
                                                "attention.output.dense", ("attention.self.query",)))
    try:
        with pytest.raises(TypeError, match=r"module base_model\.embeddings\.norm not found.*register_encoder"):
            encoder_layout(model)
    finally:
        from mlkd_fast.train.encoders import ENCODERS

        ENCODERS.pop("my-encoder")


def test_modernbert_first_layer_copy_error_says_what_to_do():
    with pytest.raises(ValueError, match="layer_map"):
        build_student(_model("modernbert"), 2, init="teacher")
