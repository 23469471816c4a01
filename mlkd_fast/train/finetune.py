"""Task fine-tuning of the teacher (MLKD distils a task-fine-tuned teacher).

Plain supervised training: cross-entropy on the labels (MSE for STS-B),
AdamW with linear decay after warm-up, dev evaluation after every epoch, the
best dev model kept (save_pretrained + tokenizer). One phase of the shared
loop (train/loop.py), so checkpoints and resume work as in distillation.
"""
from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Optional

from mlkd_fast.data.batching import Collator, num_batches
from mlkd_fast.data.prepare import prepare_splits
from mlkd_fast.data.tasks import get_task
from mlkd_fast.errors import InputTypeError
from mlkd_fast.train import checkpoint
from mlkd_fast.train.config import FinetuneConfig, config_to_dict
from mlkd_fast.train.distributed import Dist, check_global_batch
from mlkd_fast.train.loop import Phase, Run, RunResult, run_phases
from mlkd_fast.train.features import Features
from mlkd_fast.train.models import check_fits, check_head, is_qa_model, model_inputs, pad_id, record_task, resolve_device
from mlkd_fast.train.objectives import supervised_loss
from mlkd_fast.train.optim import linear_schedule, make_optimizer
from mlkd_fast.train.rundir import (
    check_output_dir,
    data_fingerprint,
    model_shape,
    start_run,
)
from mlkd_fast.train.stage import targets


@dataclass
class FinetuneResult(RunResult):
    model_dir: str = ""  # the kept model: AutoModelForSequenceClassification.from_pretrained(model_dir)


def finetune(
    model,
    train_data,
    *,
    eval_data=None,
    task: Optional[str] = None,
    config: Optional[FinetuneConfig] = None,
    output_dir: str,
    tokenizer=None,
    resume: bool = False,
    overwrite: bool = False,
    progress: bool = True,
) -> FinetuneResult:
    """Fine-tune a sequence classifier (e.g. from load_for_task(pretrained_teacher_dir(), 2)) on a task, or a
    question-answering model (load_for_task(..., qa=True)) on SQuAD examples."""
    cfg = config if config is not None else FinetuneConfig()
    if not isinstance(cfg, FinetuneConfig):
        raise InputTypeError(f"config must be a FinetuneConfig, got {type(cfg).__name__}")
    cfg.validate()
    check_output_dir(output_dir)
    spec = get_task(task) if task is not None else None
    num_labels = check_head(model, "model", spec)
    check_fits(model, "model", cfg.max_seq_length, tokenizer)
    if spec is not None:
        record_task(model, spec)  # saved with the model: evaluate and distill check it
    qa = is_qa_model(model)
    regression = num_labels == 1 and not qa
    dist = Dist.from_env(resolve_device(cfg.device))
    check_global_batch(cfg.batch_size, dist, cfg.grad_accum_steps)
    device = dist.device
    train, dev = prepare_splits(train_data, eval_data, cfg, tokenizer=tokenizer, num_labels=num_labels, qa=qa)
    settings = dict(config_to_dict(cfg), train_rows=len(train), task=spec.name if spec else None,
                    model_shape=model_shape(model), train_data=data_fingerprint(train),
                    eval_data=data_fingerprint(dev) if dev is not None else None)
    with start_run(dist, output_dir, settings, resume=resume, overwrite=overwrite, kind="finetune") as saved:
        checkpoint.seed_everything(cfg.seed)
        model.to(device)
        run = Run(kind="finetune", config=cfg, output_dir=output_dir, settings=settings, model=model,
                  model_dir=os.path.join(output_dir, "model"), train=train, dev=dev, task=spec,
                  collate=Collator(pad_id(model, tokenizer), regression=regression), device=device,
                  tokenizer=tokenizer, progress=progress, dist=dist)
        return FinetuneResult.of(run, run_phases(run, [_phase(model, cfg, regression, len(train), dist)], saved),
                                 model_dir=run.model_dir)


def _phase(model, cfg: FinetuneConfig, regression: bool, train_rows: int, dist: Dist) -> Phase:
    """Fine-tuning as one phase: cross-entropy (MSE for scores), linear decay after warm-up."""

    def step(batch):
        out = model(**model_inputs(model, batch))
        features = Features(logits=getattr(out, "logits", None), start_logits=getattr(out, "start_logits", None),
                            end_logits=getattr(out, "end_logits", None))
        loss = supervised_loss(features, targets(batch), regression)
        # a mean over this rank's samples -> its part of the global mean (no factor on one process)
        share = dist.shares({"sample": len(batch["input_ids"])}).get("sample", 1.0)
        return (loss * share if share != 1.0 else loss), {}

    optimizer = make_optimizer([model], cfg.learning_rate, cfg.weight_decay)
    total_steps = num_batches(train_rows, cfg.batch_size, dist.world) * cfg.epochs
    return Phase(stage=0, label="finetune", epochs=cfg.epochs, step=step, optimizer=optimizer,
                 scheduler=linear_schedule(optimizer, total_steps, cfg.warmup_proportion),
                 clip_params=list(model.parameters()))


__all__ = ["finetune", "FinetuneResult"]
