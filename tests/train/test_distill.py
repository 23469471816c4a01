"""distill() on tiny random BERTs: losses fall, fewer heads train, resume is exact,
the saved student reloads, and every bad input fails before training starts."""
import os

import pytest
import torch
from tiny_bert import (  # noqa: F401 (fixture)
    crash_at_save,
    one_thread,
    tiny_bert,
    tiny_tokenizer,
    tokenized_dataset,
    write_mrpc,
)

import mlkd_fast
from mlkd_fast import DistillConfig, build_student, distill
from mlkd_fast.train import checkpoint

pytestmark = pytest.mark.usefixtures("one_thread")


def _cfg(**kw):
    base = dict(stage1_epochs=1, stage2_epochs=1, batch_size=8, eval_batch_size=16, splits=4, learning_rate=5e-3, device="cpu")
    base.update(kw)
    return DistillConfig(**base)


def _weights(model):
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


def test_stage1_loss_decreases_on_a_fixed_batch(tmp_path):
    teacher = tiny_bert(layers=4, hidden=64, heads=4, intermediate=128)
    torch.manual_seed(1)
    student = build_student(teacher, 2, hidden_size=32, num_heads=2, intermediate_size=64, init="random")
    train = tokenized_dataset(8)  # one batch: every epoch is one step on the same batch
    res = distill(teacher, student, train, config=_cfg(stage1_epochs=12), output_dir=str(tmp_path / "o"),
                  stages=(1,), backend="torch", progress=False)
    first, last = res.history[0], res.history[-1]
    assert [h["stage"] for h in res.history] == [1] * 12 and set(first) >= {"emb", "mha", "ffn", "loss"}
    assert last["loss"] < 0.7 * first["loss"]
    assert last["ffn"] < first["ffn"]


def test_stage2_loss_decreases_on_a_fixed_batch(tmp_path):
    teacher = tiny_bert(layers=4, hidden=32, heads=4)
    student = build_student(teacher, 2, num_heads=2)
    train = tokenized_dataset(8)
    res = distill(teacher, student, train, config=_cfg(stage2_epochs=12, warmup_proportion=0.0), output_dir=str(tmp_path / "o"),
                  stages=(2,), backend="torch", progress=False)
    first, last = res.history[0], res.history[-1]
    assert set(first) >= {"ss", "sc", "kd", "loss"} and [h["stage"] for h in res.history] == [2] * 12
    assert last["loss"] < first["loss"] and last["sc"] < first["sc"]


def test_fewer_heads_student_trains_and_reloads_with_identical_logits(tmp_path):
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    from mlkd_fast.data import load_glue_split

    teacher = tiny_bert(layers=4, hidden=32, heads=4)
    student = build_student(teacher, 2, num_heads=1)  # 1 head vs the teacher's 4
    before = _weights(student)
    tok = tiny_tokenizer(str(tmp_path))
    glue = write_mrpc(str(tmp_path / "glue"), n_train=16, n_dev=8)
    train, dev = load_glue_split("mrpc", glue, "train"), load_glue_split("mrpc", glue, "dev")  # raw text
    res = distill(teacher, student, train, eval_data=dev, task="mrpc", tokenizer=tok, config=_cfg(stage1_epochs=2, stage2_epochs=2),
                  output_dir=str(tmp_path / "o"), backend="torch", progress=False)
    assert [(h["stage"], h["epoch"]) for h in res.history] == [(1, 1), (1, 2), (2, 1), (2, 2)]
    assert all("f1" in h["metrics"] and "accuracy" in h["metrics"] for h in res.history)
    assert res.metric == "accuracy" and res.best_metric == max(h["metrics"]["accuracy"] for h in res.history[2:])
    assert any(not torch.equal(before[k], v) for k, v in student.state_dict().items())
    assert all(torch.isfinite(torch.tensor(h["loss"])) for h in res.history)
    # the kept student (best dev epoch of stage 2) reloads with from_pretrained, with its tokenizer
    loaded = AutoModelForSequenceClassification.from_pretrained(res.student_dir).eval()
    assert loaded.config.num_attention_heads == 1 and loaded.config.num_hidden_layers == 2
    enc = AutoTokenizer.from_pretrained(res.student_dir)(["good movie", "the plot was not great"], padding=True, return_tensors="pt")
    best_epoch = max(res.history[2:], key=lambda h: h["metrics"]["accuracy"])["epoch"]
    if best_epoch == 2:  # the in-memory student is the last epoch's
        student.eval()
        with torch.no_grad():
            torch.testing.assert_close(loaded(**enc).logits, student(**enc).logits, rtol=0, atol=0)
    assert os.path.isfile(os.path.join(tmp_path, "o", "stage1", "config.json"))
    assert os.path.getsize(os.path.join(tmp_path, "o", "metrics.jsonl")) > 0


def test_saved_student_predicts_the_same_logits(tmp_path):
    from transformers import AutoModelForSequenceClassification

    teacher = tiny_bert(layers=2, hidden=32, heads=4)
    student = build_student(teacher, 1, layer_map=(2,))
    res = distill(teacher, student, tokenized_dataset(16), config=_cfg(), output_dir=str(tmp_path / "o"), backend="torch", progress=False)
    loaded = AutoModelForSequenceClassification.from_pretrained(res.student_dir).eval()
    student.eval()
    ids = torch.randint(5, 64, (3, 10))
    with torch.no_grad():
        assert torch.equal(loaded(input_ids=ids).logits, student(input_ids=ids).logits)


def test_regression_task_runs_both_stages(tmp_path):
    teacher = tiny_bert(layers=2, hidden=32, heads=4, num_labels=1)
    student = build_student(teacher, 1, layer_map=(2,), num_heads=2)
    res = distill(teacher, student, tokenized_dataset(16, num_labels=1), eval_data=tokenized_dataset(8, seed=3, num_labels=1),
                  task="sts-b", config=_cfg(), output_dir=str(tmp_path / "o"), backend="torch", progress=False)
    assert res.metric == "spearman" and set(res.history[-1]["metrics"]) == {"pearson", "spearman"}
    assert torch.isfinite(torch.tensor(res.history[-1]["kd"]))


def _run(tmp_path, name, resume=False):
    teacher = tiny_bert(layers=2, hidden=32, heads=4)
    torch.manual_seed(5)
    student = build_student(teacher, 1, layer_map=(2,), num_heads=2, init="random")
    cfg = _cfg(stage1_epochs=2, stage2_epochs=2, checkpoint_every=2, learning_rate=1e-3)
    res = distill(teacher, student, tokenized_dataset(24), eval_data=tokenized_dataset(8, seed=9), config=cfg,
                  output_dir=str(tmp_path / name), backend="torch", resume=resume, progress=False)
    return res, student


@pytest.mark.parametrize("nth_save", [3, 8])  # 3: mid stage 1; 8: mid stage 2 (steps after the last save are redone)
def test_resume_after_interruption_equals_the_uninterrupted_run(tmp_path, monkeypatch, nth_save):
    ref, ref_student = _run(tmp_path, "ref")
    with crash_at_save(monkeypatch, nth_save) as crash:  # the process dies in that write: it never happens
        _run(tmp_path, "run")
    saved = checkpoint.load_state(str(tmp_path / "run"), "distill")
    assert len(crash.calls) == nth_save and saved["state"]["global_step"] == crash.calls[-2] < crash.calls[-1]

    res, student = _run(tmp_path, "run", resume=True)
    assert res.history == ref.history
    ref_w, w = ref_student.state_dict(), student.state_dict()
    assert all(torch.equal(ref_w[k], w[k]) for k in ref_w)
    from transformers import AutoModelForSequenceClassification

    a = AutoModelForSequenceClassification.from_pretrained(ref.student_dir).state_dict()
    b = AutoModelForSequenceClassification.from_pretrained(res.student_dir).state_dict()
    assert all(torch.equal(a[k], b[k]) for k in a)


# ----------------------------------------------------------------------------- bad input


@pytest.fixture
def pair():
    teacher = tiny_bert(layers=4, hidden=32, heads=4)
    return teacher, build_student(teacher, 2, num_heads=2)


def _bad(tmp_path, teacher, student, match, exc=ValueError, **kw):
    out = tmp_path / "bad"
    args = dict(config=_cfg(), output_dir=str(out), backend="torch", progress=False)
    args.update(kw)
    train = args.pop("train", tokenized_dataset(8))
    with pytest.raises(exc, match=match):
        distill(teacher, student, train, **args)
    assert not out.exists(), "nothing may be written before the input is checked"


def test_bad_inputs_fail_before_training(tmp_path, pair):
    from transformers import BertModel

    teacher, student = pair
    _bad(tmp_path, teacher, student, "unknown task 'mrcp'", task="mrcp")
    _bad(tmp_path, teacher, student, r"splits=5 does not divide the teacher's hidden size 32", config=_cfg(splits=5))
    _bad(tmp_path, teacher, student, r"teacher layers in 1\.\.4", config=_cfg(layer_map=(2, 5)))
    _bad(tmp_path, teacher, student, "strictly increasing", config=_cfg(layer_map=(3, 3)))
    _bad(tmp_path, BertModel(teacher.config), student, "no sequence-classification head")
    three = tiny_bert(layers=4, hidden=32, heads=4, num_labels=3)
    _bad(tmp_path, three, student, "teacher's classification head has 3 labels but the task has 2", task="mrpc")
    _bad(tmp_path, three, student, "student's classification head has 2 labels but the task has 3")
    _bad(tmp_path, teacher, student, "pass tokenizer=", train=tokenized_dataset(8).rename_column("input_ids", "x").add_column("sentence1", ["a"] * 8))
    _bad(tmp_path, teacher, student, r"label 2 is outside 0\.\.1", train=tokenized_dataset(8, num_labels=3))
    _bad(tmp_path, teacher, student, "stages must be", stages=(2, 1))
    _bad(tmp_path, teacher, student, "config must be a DistillConfig", exc=TypeError, config={"splits": 4})
    _bad(tmp_path, teacher, student, "batch_size must be >= 1", config=_cfg(batch_size=0))
    _bad(tmp_path, teacher, student, "nothing to train", config=_cfg(stage1_epochs=0, stage2_epochs=0))
    _bad(tmp_path, teacher, student, "backend must be one of", backend="cuda")


def test_resume_needs_a_valid_checkpoint_and_output_is_never_overwritten_silently(tmp_path, pair):
    teacher, student = pair
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(ValueError, match="holds no checkpoint"):
        distill(teacher, student, tokenized_dataset(8), config=_cfg(), output_dir=str(empty), resume=True, backend="torch", progress=False)
    corrupt = tmp_path / "corrupt" / "checkpoint"
    corrupt.mkdir(parents=True)
    (corrupt / "state.pt").write_bytes(b"not a checkpoint")
    with pytest.raises(ValueError, match="is not an mlkd_fast checkpoint"):
        distill(teacher, student, tokenized_dataset(8), config=_cfg(), output_dir=str(tmp_path / "corrupt"), resume=True,
                backend="torch", progress=False)
    used = tmp_path / "used"
    used.mkdir()
    (used / "keep.txt").write_text("precious")
    with pytest.raises(ValueError, match="already holds files; pass overwrite=True"):
        distill(teacher, student, tokenized_dataset(8), config=_cfg(), output_dir=str(used), backend="torch", progress=False)
    assert (used / "keep.txt").read_text() == "precious"
    # a resume with other settings would not reproduce the run: refused
    distill(teacher, student, tokenized_dataset(8), config=_cfg(stage2_epochs=0), output_dir=str(used), overwrite=True,
            stages=(1,), backend="torch", progress=False)
    assert not (used / "keep.txt").exists()
    with pytest.raises(ValueError, match="not the same run.*learning_rate"):
        distill(teacher, student, tokenized_dataset(8), config=_cfg(stage2_epochs=0, learning_rate=1e-4), output_dir=str(used),
                resume=True, stages=(1,), backend="torch", progress=False)


def test_public_api_is_exported():
    for name in ("build_student", "distill", "finetune", "DistillConfig", "DistillResult", "FinetuneConfig", "evaluate"):
        assert hasattr(mlkd_fast, name)
    assert callable(mlkd_fast.distill) and callable(mlkd_fast.finetune)
