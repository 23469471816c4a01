"""MLKDTrainer: transformers.Trainer with the project's objectives, on tiny random models: the two stages, the
logged terms, a student that from_pretrained loads, and resume_from_checkpoint equal to an uninterrupted run."""
import math

import pytest
import torch
from tiny_bert import one_thread, tiny_bert, tokenized_dataset  # noqa: F401 (fixture)

from mlkd_fast import DistillConfig, build_student
from mlkd_fast.hf import MLKDTrainer

pytestmark = pytest.mark.usefixtures("one_thread")


def _args(out, **kw):
    from transformers import TrainingArguments

    base = dict(output_dir=str(out), per_device_train_batch_size=8, per_device_eval_batch_size=8, max_steps=6,
                learning_rate=5e-3, logging_steps=1, save_steps=3, save_strategy="steps", report_to=[], use_cpu=True,
                seed=0, data_seed=0, disable_tqdm=True, bf16=False, fp16=False)
    return TrainingArguments(**dict(base, **kw))


def _trainer(out, objective="mlkd", distill=None, stage1_fraction=None, **kw):
    from transformers import DataCollatorWithPadding, PreTrainedTokenizerFast

    teacher = tiny_bert(layers=4, hidden=32, heads=4)
    torch.manual_seed(1)
    student = build_student(teacher, 2, num_heads=2 if objective != "tinybert" else 4)
    train, dev = tokenized_dataset(24), tokenized_dataset(8, seed=1)
    tok = PreTrainedTokenizerFast(tokenizer_object=_word_tokenizer(), pad_token="[PAD]")
    cfg = DistillConfig(**dict(dict(objective=objective, splits=4, stage1_epochs=1, stage2_epochs=1), **(distill or {})))
    metrics = lambda p: {"accuracy": float((p.predictions.argmax(-1) == p.label_ids).mean())}  # noqa: E731
    return MLKDTrainer(model=student, teacher=teacher, args=_args(out, **kw), train_dataset=train, eval_dataset=dev,
                       data_collator=DataCollatorWithPadding(tok), compute_metrics=metrics, distill_config=cfg,
                       stage1_fraction=stage1_fraction)


def _word_tokenizer():
    from tokenizers import Tokenizer, models

    return Tokenizer(models.WordLevel({"[PAD]": 0, "[UNK]": 1}, unk_token="[UNK]"))


def test_two_stages_terms_logged_and_student_reloads(tmp_path):
    from transformers import AutoModelForSequenceClassification

    trainer = _trainer(tmp_path / "run")
    before = {k: v.clone() for k, v in trainer.model.state_dict().items()}
    trainer.train()
    logs = [h for h in trainer.state.log_history if "mlkd/stage" in h]
    stage1 = [h for h in logs if h["mlkd/stage"] == 1]
    stage2 = [h for h in logs if h["mlkd/stage"] == 2]
    assert len(stage1) == 3 and len(stage2) == 3  # stage1_fraction 1/2 of 6 steps
    assert {"mlkd/emb", "mlkd/mha", "mlkd/ffn"} <= set(stage1[0]) and "mlkd/kd" not in stage1[0]
    assert {"mlkd/ss", "mlkd/sc", "mlkd/kd"} <= set(stage2[-1])
    assert all(math.isfinite(v) for h in logs for k, v in h.items() if k.startswith("mlkd/"))
    assert any(not torch.equal(before[k], v) for k, v in trainer.model.state_dict().items())
    metrics = trainer.evaluate()
    assert 0 <= metrics["eval_accuracy"] <= 1 and math.isfinite(metrics["eval_loss"])
    trainer.save_model(str(tmp_path / "student"))
    loaded = AutoModelForSequenceClassification.from_pretrained(tmp_path / "student").eval()
    x = torch.tensor([[2, 7, 9, 3]])
    trainer.model.eval()
    with torch.no_grad():
        assert torch.allclose(loaded(input_ids=x).logits, trainer.model(input_ids=x.to(trainer.model.device)).logits)


def test_resume_from_checkpoint_equals_the_uninterrupted_run(tmp_path):
    from transformers import TrainerCallback

    class StopAt3(TrainerCallback):  # the interruption: the run ends right after its step-3 checkpoint
        def on_step_end(self, args, state, control, **kwargs):
            control.should_training_stop = state.global_step >= 3

    full = _trainer(tmp_path / "full")
    full.train()
    cut = _trainer(tmp_path / "cut")
    cut.add_callback(StopAt3())
    cut.train()
    assert cut.state.global_step == 3 and (tmp_path / "cut" / "checkpoint-3" / "mlkd_projections.pt").exists()
    resumed = _trainer(tmp_path / "cut")  # a fresh process: new student, teacher and projections
    resumed.train(resume_from_checkpoint=str(tmp_path / "cut" / "checkpoint-3"))
    assert resumed.state.global_step == 6
    for (k, a), b in zip(full.model.state_dict().items(), resumed.model.state_dict().values()):
        assert torch.allclose(a, b, atol=1e-6), k
    for a, b in zip(full.projections.parameters(), resumed.projections.parameters()):
        assert torch.allclose(a, b, atol=1e-6)
    logged = lambda t: [h["loss"] for h in t.state.log_history if "mlkd/stage" in h][-3:]  # noqa: E731
    assert logged(full) == pytest.approx(logged(resumed), rel=1e-6)


def test_one_stage_objective_and_errors(tmp_path):
    trainer = _trainer(tmp_path / "kd", objective="kd", max_steps=2, save_steps=10)
    assert trainer.current_stage() == 2
    trainer.train()
    assert all(h["mlkd/stage"] == 2 for h in trainer.state.log_history if "mlkd/stage" in h)
    with pytest.raises(ValueError, match="stage1_fraction"):
        MLKDTrainer(model=build_student(tiny_bert(), 2), teacher=tiny_bert(), args=_args(tmp_path / "x"),
                    distill_config=DistillConfig(splits=4), stage1_fraction=1.5)
    with pytest.raises(TypeError, match="teacher must be a model other than the student"):
        student = build_student(tiny_bert(), 2)
        MLKDTrainer(model=student, teacher=student, args=_args(tmp_path / "y"))


def test_gradient_accumulation_clears_the_projections_once_per_step(tmp_path):
    trainer = _trainer(tmp_path / "acc", max_steps=2, save_steps=10, per_device_train_batch_size=4,
                       gradient_accumulation_steps=2)
    seen = []
    hook = trainer.projections.hidden[0].weight.register_hook(lambda g: seen.append(g.clone()))
    before = [p.detach().clone() for p in trainer.projections.parameters()]
    trainer.train()
    hook.remove()
    # step 1 is stage 1 (its 2 micro-batches reach W_0), step 2 stage 2 (L_FFN off)
    assert trainer.state.global_step == 2 and len(seen) == 2
    assert all(p.grad is None for p in trainer.projections.parameters())  # cleared after each optimiser step
    assert any(not torch.equal(a, b) for a, b in zip(before, trainer.projections.parameters()))


def test_ddp_two_ranks_keep_student_and_projections_identical(tmp_path):
    """torchrun, 2 gloo ranks: DDP averages the student's gradients, MLKDTrainer the projections' (they live
    outside the DDP module); both must stay the same on every rank."""
    import os
    import socket
    import subprocess
    import sys

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    worker = os.path.join(os.path.dirname(os.path.abspath(__file__)), "hf_ddp_worker.py")
    env = dict(os.environ, OMP_NUM_THREADS="1", HF_HUB_OFFLINE="1", TRANSFORMERS_VERBOSITY="error")
    out = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_addr",
                          "127.0.0.1", "--master_port", str(port), worker, str(tmp_path)],
                         capture_output=True, text=True, env=env, timeout=600, cwd=str(tmp_path))
    assert out.returncode == 0, out.stderr[-4000:]
    r0, r1 = (torch.load(tmp_path / f"rank{r}.pt", weights_only=False) for r in (0, 1))
    assert r0["world"] == r1["world"] == 2
    for part in ("projections", "student"):
        for k in r0[part]:
            assert torch.allclose(r0[part][k], r1[part][k], atol=1e-6), (part, k)


@pytest.mark.parametrize("objective,stage", [("ft", 2), ("kd", 2), ("mlkd", 1), ("mlkd", 2), ("tinybert", 1),
                                             ("tinybert", 2), ("minilmv2", 1), ("minilmv2", 2)])
def test_gradient_accumulation_averages_like_one_big_batch(tmp_path, objective, stage):
    """One optimiser step of 2 x 8 accumulated micro-batches moves the student and the projections exactly as one
    step of 16 (plain SGD, no clipping), and logs the same loss, for every objective and stage. Conditions under
    which the two are the same computation: sequences of one length (token-mean terms weigh micro-batches
    equally) and the batch-relation terms L_SS and L_SC off (they relate the samples of one micro-batch)."""
    from tokenizers import Tokenizer  # noqa: F401 (the trainer's collator)

    def one_step(out, batch, accum):
        relations_off = {"stage2_weights": {"ss": 0.0, "sc": 0.0}} if objective == "mlkd" else {}
        trainer = _trainer(out, objective=objective, distill=relations_off,
                           stage1_fraction=1.0 if stage == 1 else 0.0, per_device_train_batch_size=batch,
                           gradient_accumulation_steps=accum, max_steps=1, optim="sgd", learning_rate=1.0,
                           max_grad_norm=0.0, weight_decay=0.0, save_strategy="no", warmup_steps=0,
                           lr_scheduler_type="constant")
        trainer.train_dataset = tokenized_dataset(16, min_len=10, max_len=10)
        for m in list(trainer.model.modules()) + list(trainer.teacher.modules()):  # the two runs draw other masks
            if isinstance(m, torch.nn.Dropout):
                m.p = 0.0
        params = dict(trainer.model.named_parameters(), **{f"proj.{k}": v for k, v in trainer.projections.named_parameters()})
        before = {k: v.detach().clone() for k, v in params.items()}
        trainer.train()
        assert [h["mlkd/stage"] for h in trainer.state.log_history if "mlkd/stage" in h] == [stage]
        loss = next(h["loss"] for h in trainer.state.log_history if "loss" in h)
        return {k: v.detach() - before[k] for k, v in params.items()}, loss

    big, big_loss = one_step(tmp_path / "big", 16, 1)
    acc, acc_loss = one_step(tmp_path / "acc", 8, 2)
    assert sum(float(d.abs().sum()) for d in big.values()) > 0
    for k in big:
        torch.testing.assert_close(acc[k], big[k], rtol=1e-4, atol=1e-6, msg=k)
    assert acc_loss == pytest.approx(big_loss, rel=1e-4)


def test_eval_loss_is_the_students_hard_label_loss_in_every_stage(tmp_path):
    import torch.nn.functional as F

    trainer = _trainer(tmp_path / "run", max_steps=2)
    batch = trainer.data_collator([trainer.eval_dataset[i] for i in range(len(trainer.eval_dataset))])
    expected = []
    for stage in (1, 2):
        trainer.current_stage = lambda stage=stage: stage  # noqa: E731
        got = trainer.evaluate()["eval_loss"]
        trainer.model.eval()
        with torch.no_grad():
            logits = trainer.model(**{k: v for k, v in batch.items() if k != "labels"}).logits
        expected.append(F.cross_entropy(logits, batch["labels"]).item())
        assert got == pytest.approx(expected[-1], rel=1e-5)


def test_model_init_gives_each_run_a_fresh_student_and_fresh_projections(tmp_path):
    from transformers import DataCollatorWithPadding, PreTrainedTokenizerFast

    teacher = tiny_bert(layers=4, hidden=32, heads=4)

    def model_init():
        torch.manual_seed(1)
        return build_student(teacher, 2, num_heads=2)

    tok = PreTrainedTokenizerFast(tokenizer_object=_word_tokenizer(), pad_token="[PAD]")
    trainer = MLKDTrainer(model_init=model_init, teacher=teacher, args=_args(tmp_path / "run", max_steps=2,
                                                                               save_strategy="no"),
                          train_dataset=tokenized_dataset(24), data_collator=DataCollatorWithPadding(tok),
                          distill_config=DistillConfig(splits=4, stage1_epochs=1, stage2_epochs=1))
    runs = []
    for _ in range(2):
        trainer.train()
        held = {id(p) for g in trainer.optimizer.param_groups for p in g["params"]}
        assert all(id(p) in held for p in trainer.projections.parameters())  # trained in this run's optimiser
        runs.append((id(trainer.projections), {k: v.clone() for k, v in trainer.model.state_dict().items()}))
    assert runs[0][0] != runs[1][0]  # new projections for the new student
    assert all(torch.equal(v, runs[1][1][k]) for k, v in runs[0][1].items())  # same seed, same run


def test_question_answering_distils_both_stages(tmp_path):
    """A *ForQuestionAnswering teacher and student: both stages run on batches with answer positions, every term
    is finite, the hard-label eval loss is the student's own span loss, and a classifier student is refused."""
    import datasets
    from transformers import BertForQuestionAnswering, DataCollatorWithPadding, PreTrainedTokenizerFast

    from tiny_bert import tiny_config

    torch.manual_seed(0)
    teacher = BertForQuestionAnswering(tiny_config(layers=4, hidden=32, heads=4))
    torch.manual_seed(1)
    student = build_student(teacher, 2, num_heads=2)
    assert type(student).__name__ == "BertForQuestionAnswering"
    rows = tokenized_dataset(24, min_len=10, max_len=12).to_dict()
    g = torch.Generator().manual_seed(0)
    starts = torch.randint(1, 5, (24,), generator=g)
    rows.update(start_positions=starts.tolist(), end_positions=(starts + torch.randint(0, 4, (24,), generator=g)).tolist())
    rows.pop("labels")
    train = datasets.Dataset.from_dict(rows)
    tok = PreTrainedTokenizerFast(tokenizer_object=_word_tokenizer(), pad_token="[PAD]")
    trainer = MLKDTrainer(model=student, teacher=teacher, args=_args(tmp_path / "qa", save_strategy="no"),
                          train_dataset=train, eval_dataset=train.select(range(8)), data_collator=DataCollatorWithPadding(tok),
                          distill_config=DistillConfig(splits=4, stage1_epochs=1, stage2_epochs=1))
    trainer.train()
    logs = [h for h in trainer.state.log_history if "mlkd/stage" in h]
    assert {h["mlkd/stage"] for h in logs} == {1, 2}
    assert {"mlkd/ss", "mlkd/kd"} <= set(logs[-1]) and all(math.isfinite(v) for h in logs for k, v in h.items()
                                                           if k.startswith("mlkd/"))
    assert math.isfinite(trainer.evaluate()["eval_loss"])
    with pytest.raises(Exception, match="same kind of head"):
        MLKDTrainer(model=tiny_bert(layers=2, hidden=32, heads=4), teacher=teacher, args=_args(tmp_path / "bad"),
                    train_dataset=train)
