"""soft_cross_entropy: L_KD, soft labels from the teacher's logits.

A (B, C) problem: there is nothing to fuse, so one torch implementation
serves every device.
"""
from __future__ import annotations

import torch

from mlkd_fast.errors import InputError
from mlkd_fast.ops import _validate, reference

REDUCTIONS = ("batchmean", "mean", "none")


def soft_cross_entropy(teacher_logits, student_logits, temperature: float = 1.0, reduction: str = "batchmean") -> torch.Tensor:
    """-sum_c softmax(t/T)_c log_softmax(s/T)_c per sample.

    reduction: "batchmean" averages over the batch; "mean" divides by B*C (the
    authors' code, `.mean()` over batch and classes); "none" returns (B,).
    No T^2 factor: the method uses T = 1.
    """
    _validate.logits_pair(teacher_logits, student_logits)
    temperature = _validate.positive_float(temperature, "temperature")
    if reduction not in REDUCTIONS:
        raise InputError(f"reduction must be one of {REDUCTIONS}, got {reduction!r}")
    return reference.soft_cross_entropy(teacher_logits, student_logits, temperature, reduction)
