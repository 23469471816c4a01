"""Small pieces shared by the fine-tuning and distillation loops: device choice,
model checks, the optimiser and lr schedules, and the metric logger.
"""
from __future__ import annotations

import json
import os
import time
from typing import Dict, Iterable, Optional

import torch
import torch.nn as nn


def resolve_device(device: str) -> torch.device:
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        dev = torch.device(device)
    except (RuntimeError, TypeError) as e:
        raise ValueError(f"device must be 'auto', 'cpu', 'cuda' or 'cuda:N', got {device!r}") from e
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"device {device!r} was requested but no CUDA device is available")
    return dev


def check_classifier(model: nn.Module, name: str, num_labels: Optional[int]) -> int:
    """The model must be a sequence classifier (with a head) for the task's label count."""
    if not isinstance(model, nn.Module) or not hasattr(model, "config"):
        raise TypeError(f"{name} must be a transformers model (nn.Module with .config), got {type(model).__name__}")
    cls = type(model).__name__
    if not cls.endswith("ForSequenceClassification"):
        raise ValueError(
            f"{name} is a {cls}, which has no sequence-classification head; load it with "
            "AutoModelForSequenceClassification (and fine-tune it on the task first if it is the teacher)"
        )
    have = int(model.config.num_labels)
    if num_labels is not None and have != num_labels:
        raise ValueError(f"{name}'s classification head has {have} labels but the task has {num_labels}")
    return have


def param_groups(modules: Iterable[nn.Module], weight_decay: float):
    """BERT convention: no weight decay on biases and LayerNorm weights."""
    decay, no_decay, seen = [], [], set()
    for module in modules:
        for n, p in module.named_parameters():
            if not p.requires_grad or id(p) in seen:
                continue
            seen.add(id(p))
            (no_decay if n.endswith("bias") or "LayerNorm" in n or "layer_norm" in n else decay).append(p)
    return [{"params": decay, "weight_decay": weight_decay}, {"params": no_decay, "weight_decay": 0.0}]


def make_optimizer(modules: Iterable[nn.Module], lr: float, weight_decay: float) -> torch.optim.Optimizer:
    return torch.optim.AdamW(param_groups(modules, weight_decay), lr=lr, betas=(0.9, 0.999), eps=1e-6)


def linear_schedule(optimizer, total_steps: int, warmup_proportion: float):
    """Linear warm-up over warmup_proportion of the steps, then linear decay to 0."""
    warmup = int(total_steps * warmup_proportion)

    def factor(step: int) -> float:
        if step < warmup:
            return (step + 1) / warmup
        return max(0.0, (total_steps - step) / max(1, total_steps - warmup))

    return torch.optim.lr_scheduler.LambdaLR(optimizer, factor)


def constant_schedule(optimizer):
    return torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: 1.0)


class MetricLogger:
    """Appends one JSON object per line to `path`; mirrors scalars to TensorBoard when it is installed."""

    def __init__(self, path: str, tensorboard_dir: Optional[str] = None):
        self.path = path
        self.writer = None
        if tensorboard_dir is not None:
            try:
                from torch.utils.tensorboard import SummaryWriter

                self.writer = SummaryWriter(tensorboard_dir)
            except Exception:  # tensorboard is optional: JSONL is the log of record
                self.writer = None

    def log(self, record: Dict, step: Optional[int] = None) -> None:
        record = dict(record, time=round(time.time(), 3))
        with open(self.path, "a", encoding="utf-8") as f:
            f.write(json.dumps(record) + "\n")
        if self.writer is not None and step is not None:
            prefix = record.get("kind", "train")
            for k, v in record.items():
                if isinstance(v, (int, float)) and not isinstance(v, bool) and k not in ("step", "epoch", "stage", "time"):
                    self.writer.add_scalar(f"{prefix}/{k}", v, step)
            for k, v in record.get("metrics", {}).items():
                self.writer.add_scalar(f"dev/{k}", v, step)

    def close(self) -> None:
        if self.writer is not None:
            self.writer.close()


def progress_bar(total: int, initial: int, desc: str, enabled: bool):
    from tqdm.auto import tqdm

    return tqdm(total=total, initial=initial, desc=desc, disable=not enabled, dynamic_ncols=True, leave=False)


def to_device(batch: Dict[str, torch.Tensor], device: torch.device) -> Dict[str, torch.Tensor]:
    return {k: v.to(device) for k, v in batch.items()}


def save_json(path: str, obj) -> None:
    tmp = path + ".tmp"
    with open(tmp, "w", encoding="utf-8") as f:
        json.dump(obj, f, indent=2)
    os.replace(tmp, path)


__all__ = [
    "resolve_device",
    "check_classifier",
    "make_optimizer",
    "linear_schedule",
    "constant_schedule",
    "MetricLogger",
    "progress_bar",
    "to_device",
    "save_json",
]
