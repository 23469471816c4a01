"""The optimisers (AdamW with the BERT weight-decay convention, or the authors' BertAdam) and the two lr
schedules of the recipe."""
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


class BertAdam(torch.optim.Optimizer):
    """The original BERT optimiser, as the authors' code uses it: each parameter tensor's gradient is clipped
    to norm `max_grad_norm` on its own (not the global norm), Adam moments without bias correction, and
    decoupled weight decay added to the update: p -= lr * (m / (sqrt(v) + eps) + wd * p)."""

    def __init__(self, params, lr: float, betas=(0.9, 0.999), eps: float = 1e-6, weight_decay: float = 0.0,
                 max_grad_norm: float = 1.0):
        super().__init__(params, dict(lr=lr, betas=betas, eps=eps, weight_decay=weight_decay,
                                      max_grad_norm=max_grad_norm))

    @torch.no_grad()
    def step(self, closure=None):
        for group in self.param_groups:
            beta1, beta2 = group["betas"]
            for p in group["params"]:
                if p.grad is None:
                    continue
                state = self.state[p]
                if not state:
                    state["exp_avg"] = torch.zeros_like(p)
                    state["exp_avg_sq"] = torch.zeros_like(p)
                grad = p.grad
                if group["max_grad_norm"] > 0:
                    grad = grad * (group["max_grad_norm"] / grad.norm().clamp_min(group["max_grad_norm"]))
                m, v = state["exp_avg"], state["exp_avg_sq"]
                m.mul_(beta1).add_(grad, alpha=1 - beta1)
                v.mul_(beta2).addcmul_(grad, grad, value=1 - beta2)
                update = m / (v.sqrt() + group["eps"])
                if group["weight_decay"] > 0:
                    update = update + group["weight_decay"] * p
                p.add_(update, alpha=-group["lr"])


def make_optimizer(modules: Iterable[nn.Module], lr: float, weight_decay: float, kind: str = "adamw",
                   max_grad_norm: float = 1.0) -> torch.optim.Optimizer:
    """"adamw": torch's AdamW (the trainer clips the global norm); "bertadam": BertAdam, clipping per tensor."""
    groups = param_groups(modules, weight_decay)
    if kind == "bertadam":
        return BertAdam(groups, lr=lr, weight_decay=weight_decay, max_grad_norm=max_grad_norm)
    return torch.optim.AdamW(groups, lr=lr, betas=(0.9, 0.999), eps=1e-6)


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


__all__ = ["param_groups", "BertAdam", "make_optimizer", "optimized_params", "linear_schedule", "constant_schedule"]
