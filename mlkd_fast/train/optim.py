"""The optimiser (AdamW with the BERT weight-decay convention) and the two lr schedules of the recipe."""
from __future__ import annotations

from typing import Iterable

import torch
import torch.nn as nn


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


def optimized_params(optimizer: torch.optim.Optimizer):
    """Every parameter the optimiser updates, in group order (what gradient clipping covers)."""
    return [p for group in optimizer.param_groups for p in group["params"]]


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


__all__ = ["param_groups", "make_optimizer", "optimized_params", "linear_schedule", "constant_schedule"]
