"""General (task-agnostic) distillation: stage 1 of an objective, from a pretrained (not fine-tuned) teacher,
on unlabelled text, into a student of any shape. One phase of the shared loop (train/loop.py).

    text -> packed sequences on disk (data/corpus.py) -> batches
         -> teacher and student features -> stage-1 terms (L_EMB + L_MHA + L_FFN for mlkd)
         -> optimiser step -> log (tokens/s) / periodic checkpoint / exact resume
The result is a task-agnostic student folder (AutoModel.from_pretrained loads it, the tokenizer beside it)
that `distill --student DIR` and `finetune --model DIR` take: a task head is added there.
"""
from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Optional

from mlkd_fast.data.batching import Collator
from mlkd_fast.data.corpus import packed_corpus
from mlkd_fast.errors import InputError
from mlkd_fast.ops import backends
from mlkd_fast.train import checkpoint
from mlkd_fast.train.config import DistillConfig, config_to_dict
from mlkd_fast.train.distributed import Dist, check_global_batch
from mlkd_fast.train.loop import Run, RunResult, run_phases
from mlkd_fast.train.models import check_fits, pad_id, resolve_device
from mlkd_fast.train.rundir import check_output_dir, data_fingerprint, model_shape, start_run, weights_fingerprint
from mlkd_fast.train.stage import DistillSetup, checked_config, plan_terms


@dataclass
class GeneralDistillResult(RunResult):
    student_dir: str = ""  # AutoModel.from_pretrained(student_dir); the tokenizer is saved beside it


# General distillation's own defaults over DistillConfig's (one pass over a corpus, a larger lr); the CLI's too.
GENERAL_DEFAULTS = {"stage1_epochs": 1, "learning_rate": 1e-4}


def general_distill(
    teacher,
    student,
    corpus,
    *,
    tokenizer,
    output_dir: str,
    config: Optional[DistillConfig] = None,
    backend: str = "auto",
    resume: bool = False,
    overwrite: bool = False,
    progress: bool = True,
) -> GeneralDistillResult:
    """Distil a pretrained `teacher` encoder into `student` (e.g. build_student(teacher, 4, hidden_size=312,
    init="random")) on unlabelled text with stage 1 of config.objective.

    corpus: text files and/or folders of them (one sentence or document per line), or a datasets.Dataset
        with a 'text' column. It is tokenised and packed into sequences of config.max_seq_length tokens,
        written to <output_dir>/corpus as Arrow files while it streams, and reused while unchanged.
    config: a DistillConfig; its stage1_epochs (or max_steps), learning rate, batch size, splits, stage-1
        weights and recipe choices apply; stage 1 runs at a constant lr.
    """
    cfg = checked_config(config, default=DistillConfig(**GENERAL_DEFAULTS))
    if 1 not in cfg.objective_stages:
        raise InputError(f"objective {cfg.objective!r} has no stage 1 (intermediate layers) to distil without labels")
    if cfg.stage1_epochs == 0:
        raise InputError("stage1_epochs is 0: give the general distillation at least one epoch (or max_steps)")
    if tokenizer is None:
        raise InputError("general_distill needs the teacher's tokenizer (tokenizer=) to read the corpus")
    check_output_dir(output_dir)
    if student is teacher:
        raise InputError("student is the teacher itself: build a separate student (build_student)")
    for role, model in (("teacher", teacher), ("student", student)):
        check_fits(model, role, cfg.max_seq_length, tokenizer)
    plan, term_settings = plan_terms(teacher, student, cfg, (1,))
    dist = Dist.from_env(resolve_device(cfg.device))
    check_global_batch(cfg.batch_size, dist, cfg.grad_accum_steps)
    backend = backends.resolve(backend, dist.device)
    train = packed_corpus(corpus, tokenizer, cfg.max_seq_length, os.path.join(output_dir + ".corpus"))
    settings = dict(config_to_dict(cfg), stage1_weights=cfg.weights(1), layer_map=list(plan.layer_map), backend=backend,
                    train_rows=len(train), teacher_weights=weights_fingerprint(teacher),
                    teacher_shape=model_shape(teacher), student_shape=model_shape(student),
                    train_data=data_fingerprint(train))
    with start_run(dist, output_dir, settings, resume=resume, overwrite=overwrite, kind="general") as saved:
        checkpoint.seed_everything(cfg.seed)
        student.to(dist.device)
        setup = DistillSetup.build(teacher, student, cfg, plan, term_settings, dist.device, backend, False, dist)
        run = Run(kind="general", config=cfg, output_dir=output_dir, settings=settings, model=student,
                  model_dir=os.path.join(output_dir, "student"), train=train, dev=None, task=None,
                  collate=Collator(pad_id(teacher, tokenizer)), device=dist.device, tokenizer=tokenizer,
                  progress=progress, extra_modules={"projections": setup.projections}, dist=dist)
        phases = setup.phases((1,), cfg, teacher, student, len(train), output_dir, label="general")
        return GeneralDistillResult.of(run, run_phases(run, phases, saved), student_dir=run.model_dir)


__all__ = ["general_distill", "GeneralDistillResult", "GENERAL_DEFAULTS"]
