"""Two-stage MLKD distillation (docs/method.md), and the rival objectives, as phases of the shared loop.

    batch -> teacher features (frozen, no_grad) and student features (hooks, capture.py)
          -> loss terms (objectives.py: the relation terms run on the fused ops)
          -> AdamW step -> lr schedule -> log / checkpoint
Stage 1 trains student + the L_FFN projections on L_EMB + L_MHA + L_FFN at a
constant lr; stage 2 starts from the stage-1 student and trains student + the
L_SC projection on L_SS + L_SC + L_KD with linear decay after 10 % warm-up.
The other objectives (config.OBJECTIVES: ft, kd, tinybert, minilmv2) are other
terms in the same stages; each step captures only what its terms read, and the
teacher runs only when a term reads it. After every epoch (and every
`eval_every` steps) the student is evaluated on the dev set; the best dev
checkpoint of the last stage is kept (save_pretrained + tokenizer).
"""
from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Optional, Sequence

from mlkd_fast.data.batching import Collator
from mlkd_fast.data.prepare import prepare_splits
from mlkd_fast.data.tasks import get_task
from mlkd_fast.errors import InputError, InputTypeError
from mlkd_fast.ops import backends
from mlkd_fast.train import checkpoint
from mlkd_fast.train.config import DistillConfig, config_to_dict
from mlkd_fast.train.distributed import Dist, check_global_batch
from mlkd_fast.train.loop import Run, RunResult, run_phases
from mlkd_fast.train.models import (
    as_model,
    check_fits,
    check_head,
    check_task,
    is_qa_model,
    pad_id,
    record_task,
    resolve_device,
)
from mlkd_fast.train.objectives import RunPlan, cached_features
from mlkd_fast.train.rundir import (
    check_output_dir,
    data_fingerprint,
    model_shape,
    start_run,
    weights_fingerprint,
)
from mlkd_fast.train.stage import DistillSetup, checked_config, plan_terms
from mlkd_fast.train.teacher_cache import open_or_build


@dataclass
class DistillResult(RunResult):
    student_dir: str = ""  # the kept student: AutoModelForSequenceClassification.from_pretrained(student_dir)


def distill(
    teacher,
    student,
    train_data,
    *,
    eval_data=None,
    task: Optional[str] = None,
    config: Optional[DistillConfig] = None,
    output_dir: str,
    stages: Optional[Sequence[int]] = None,
    backend: str = "auto",
    resume: bool = False,
    overwrite: bool = False,
    tokenizer=None,
    progress: bool = True,
    allow_other_task: bool = False,
) -> DistillResult:
    """Distil `teacher` (a task-fine-tuned sequence classifier) into `student` (e.g. from build_student).

    teacher / student: models, or directories holding fine-tuned classifiers (question-answering models for
    task="squad"/"squad_v2": then train_data/eval_data are datasets of SQuAD examples, see data/squad.py).
    stages: the stages to run, (1, 2), (1,) or (2,); None = every stage of config.objective.
    train_data / eval_data: datasets.Dataset, raw text (sentence1[, sentence2], labels; pass tokenizer=)
    or tokenised (input_ids, attention_mask[, token_type_ids], labels).
    A model whose config records another task (finetune and distill record theirs) is refused unless
    allow_other_task=True; the student is saved with the task recorded.
    """
    cfg = checked_config(config)
    check_output_dir(output_dir)
    stages = _check_stages(stages, cfg)
    spec = get_task(task) if task is not None else None
    load_qa = bool(spec.qa) if spec else False  # a path is loaded with the task's head
    teacher, student = as_model(teacher, "teacher", qa=load_qa), as_model(student, "student", qa=load_qa)
    num_labels = check_head(teacher, "teacher", spec)
    if is_qa_model(teacher) != is_qa_model(student):
        raise InputError(f"the teacher is a {type(teacher).__name__} but the student a {type(student).__name__}: "
                         "both need the same kind of head")
    check_head(student, "student", spec, num_labels)
    for role, model in (("the teacher", teacher), ("the student", student)):
        check_task(model, role, spec, allow_other_task)
    qa = is_qa_model(teacher)  # without a task, the models' heads decide
    if student is teacher:
        raise InputError("student is the teacher itself: build a separate student (build_student) or load another copy")
    for role, model in (("teacher", teacher), ("student", student)):
        check_fits(model, role, cfg.max_seq_length, tokenizer)
    if student.config.vocab_size != teacher.config.vocab_size:
        raise InputError(f"the student's vocabulary ({student.config.vocab_size} tokens) differs from the teacher's "
                         f"({teacher.config.vocab_size}): both read the same input_ids")
    plan, term_settings = plan_terms(teacher, student, cfg, stages, qa=qa)
    dist = Dist.from_env(resolve_device(cfg.device))
    check_global_batch(cfg.batch_size, dist, cfg.grad_accum_steps)
    device = dist.device
    backend = backends.resolve(backend, device)
    train, dev = prepare_splits(train_data, eval_data, cfg, tokenizer=tokenizer, num_labels=num_labels, qa=qa)
    settings = dict(config_to_dict(cfg), stages=list(stages), stage1_weights=cfg.weights(1), stage2_weights=cfg.weights(2), layer_map=list(plan.layer_map), backend=backend,
                    train_rows=len(train), task=spec.name if spec else None, minilm_layer=term_settings["qkv"].layer if cfg.objective == "minilmv2" else None,
                    teacher_weights=weights_fingerprint(teacher), teacher_shape=model_shape(teacher),
                    student_shape=model_shape(student), train_data=data_fingerprint(train),
                    eval_data=data_fingerprint(dev) if dev is not None else None)
    with start_run(dist, output_dir, settings, resume=resume, overwrite=overwrite, kind="distill") as saved:
        checkpoint.seed_everything(cfg.seed)
        student.to(device)
        if spec is not None:
            record_task(student, spec)  # saved with the student: evaluate and a later distill check it
        regression = num_labels == 1 and not qa
        setup = DistillSetup.build(teacher, student, cfg, plan, term_settings, device, backend, regression, dist)
        run = Run(kind="distill", config=cfg, output_dir=output_dir, settings=settings, model=student,
                  model_dir=os.path.join(output_dir, "student"), train=train, dev=dev, task=spec,
                  collate=Collator(pad_id(teacher, tokenizer), regression=regression), device=device,
                  tokenizer=tokenizer, progress=progress, extra_modules={"projections": setup.projections}, dist=dist)
        cache = _teacher_cache(cfg, teacher, run, stages, plan, term_settings) if cfg.teacher_cache else None
        phases = setup.phases(stages, cfg, teacher, student, len(train), output_dir, cache)
        return DistillResult.of(run, run_phases(run, phases, saved), student_dir=run.model_dir)


def _teacher_cache(cfg, teacher, run: Run, stages, plan: RunPlan, term_settings):
    """The teacher-output cache of this run's training data: built by rank 0 when missing, opened by all."""
    names = {name for s in stages for name in cached_features(cfg.weights(s), term_settings, plan)}
    depends_on = dict(teacher=run.settings["teacher_weights"], data=run.settings["train_data"],
                      mha_feature=cfg.mha_feature)
    args = dict(depends_on=depends_on, batch_size=cfg.eval_batch_size, collate=run.collate, device=run.device,
                dtype=cfg.teacher_cache_dtype, max_gb=cfg.teacher_cache_max_gb)
    cache = open_or_build(cfg.teacher_cache, teacher, run.train, names, **args) if run.dist.is_main else None
    run.dist.barrier()
    if cache is None:  # the other ranks open what rank 0 built (rank 0 opened it once already)
        cache = open_or_build(cfg.teacher_cache, teacher, run.train, names, log=lambda *_: None, **args)
    return cache


def _check_stages(stages, cfg: DistillConfig) -> tuple:
    """The stages to run, in order, without those configured to 0 epochs."""
    if stages is None:
        stages = cfg.objective_stages
    try:
        stages = tuple(int(s) for s in stages)
    except (TypeError, ValueError):
        raise InputTypeError(f"stages must be a sequence of stage numbers like (1, 2), got {stages!r}") from None
    if not stages or any(s not in (1, 2) for s in stages) or list(stages) != sorted(set(stages)):
        raise InputError(f"stages must be (1,), (2,) or (1, 2), got {stages}")
    missing = [s for s in stages if s not in cfg.objective_stages]
    if missing:
        raise InputError(f"objective {cfg.objective!r} has no stage {missing[0]} (its stages: {cfg.objective_stages})")
    epochs = {1: cfg.stage1_epochs, 2: cfg.stage2_epochs}
    if all(epochs[s] == 0 for s in stages):
        raise InputError(f"every stage in {stages} has 0 epochs: nothing to train")
    return tuple(s for s in stages if epochs[s] > 0)


__all__ = ["distill", "DistillResult"]
