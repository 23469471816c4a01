"""Mixed precision: bf16 and fp16 autocast distillation on tiny models runs, stays finite, and its loss terms
stay within a stated tolerance of the fp32 run's (bf16 keeps 8 mantissa bits: a few per cent per step)."""
import pytest
import torch
from tiny_bert import one_thread, tiny_bert, tokenized_dataset  # noqa: F401 (fixture)

from mlkd_fast import DistillConfig, build_student, distill
from mlkd_fast.train import checkpoint

pytestmark = pytest.mark.usefixtures("one_thread")
TOLERANCE = {"bf16": 0.05, "fp16": 0.01}  # relative, per logged term, first stage-1 and stage-2 steps


def _run(tmp_path, precision, **kw):
    teacher = tiny_bert(layers=2, hidden=32, heads=4)
    torch.manual_seed(5)
    student = build_student(teacher, 1, layer_map=(2,), num_heads=2, init="random")
    cfg = DistillConfig(stage1_epochs=1, stage2_epochs=1, batch_size=8, splits=4, learning_rate=1e-3, device="cpu",
                        precision=precision, checkpoint_every=1)
    return distill(teacher, student, tokenized_dataset(16), eval_data=tokenized_dataset(8, seed=9), config=cfg,
                   output_dir=str(tmp_path / precision), backend="cpp", progress=False, **kw)


def _first_steps(out):
    import json

    rows = [json.loads(line) for line in open(out / "metrics.jsonl") if '"kind": "train"' in line]
    return [next(r for r in rows if r["stage"] == s) for s in (1, 2)]


@pytest.mark.parametrize("precision", ["bf16", "fp16"])
def test_autocast_distillation_is_close_to_fp32(tmp_path, precision):
    _run(tmp_path, "fp32")
    res = _run(tmp_path, precision)
    assert all(torch.isfinite(torch.tensor(h["loss"])) for h in res.history)
    for ref, got in zip(_first_steps(tmp_path / "fp32"), _first_steps(tmp_path / precision)):
        for term in ("emb", "mha", "ffn", "ss", "sc", "kd"):
            if term in ref:
                assert got[term] == pytest.approx(ref[term], rel=TOLERANCE[precision], abs=1e-4), term
    if precision == "fp16":  # the gradient scaler's state is part of the checkpoint
        assert "scaler" in checkpoint.load_state(str(tmp_path / "fp16"), "distill")


@pytest.mark.parametrize("objective,stage", [("ft", 2), ("kd", 2), ("mlkd", 1), ("mlkd", 2), ("tinybert", 1),
                                             ("tinybert", 2), ("minilmv2", 1), ("minilmv2", 2)])
def test_gradient_accumulation_equals_the_whole_batch(tmp_path, monkeypatch, objective, stage):
    """Two micro-batches of 4 average to the gradient of the batch of 8, for every objective and stage: the same
    gradient norm at every step (AdamW alone would hide a summed, doubled gradient) and the same weights. The
    conditions under which the two are one computation: sequences of one length (token-mean terms weigh the
    micro-batches equally) and the batch relations L_SS, L_SC off (they span one micro-batch; README)."""
    students, norms = [], {1: [], 2: []}
    clip = torch.nn.utils.clip_grad_norm_
    for accum in (1, 2):
        def record(params, max_norm, *a, accum=accum, **kw):
            norm = clip(params, max_norm, *a, **kw)
            norms[accum].append(float(norm))
            return norm

        monkeypatch.setattr(torch.nn.utils, "clip_grad_norm_", record)
        teacher = tiny_bert(layers=2, hidden=32, heads=4)
        teacher.config.hidden_dropout_prob = teacher.config.attention_probs_dropout_prob = 0.0  # the student's too
        torch.manual_seed(5)
        student = build_student(teacher, 1, layer_map=(2,), num_heads=4 if objective == "tinybert" else 2,
                                init="random")
        cfg = DistillConfig(objective=objective, stage1_epochs=2 if stage == 1 else 0, stage2_epochs=2, batch_size=8,
                            splits=4, learning_rate=1e-3, device="cpu", grad_accum_steps=accum,
                            stage2_weights={"ss": 0.0, "sc": 0.0} if objective == "mlkd" else {})
        distill(teacher, student, tokenized_dataset(16, min_len=10, max_len=10), config=cfg,
                output_dir=str(tmp_path / f"a{accum}"), stages=(stage,), backend="cpp", progress=False)
        students.append(student.state_dict())
    assert len(norms[1]) == len(norms[2]) == 4 and min(norms[1]) > 0
    assert norms[1] == pytest.approx(norms[2], rel=1e-5)
    assert max((students[0][k] - students[1][k]).abs().max().item() for k in students[0]) < 1e-6