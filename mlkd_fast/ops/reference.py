"""The eager PyTorch reference ("torch" backend): docs/method.md in executable form.

Everything here materialises the full similarity matrices, which is exactly
what the fused backends avoid; these functions are the specification the
fused kernels are tested against (in float64) and the baseline the benchmarks
compare with. Inputs are upcast to the accumulation dtype (fp32, or fp64 for
fp64 inputs); autograd provides the backward.
"""
from __future__ import annotations

import math
from typing import Optional

import torch
import torch.nn.functional as F


def relation_log_probs(x: torch.Tensor, splits: int, key_valid: torch.Tensor) -> torch.Tensor:
    """log rel(x, A): (B, L, D) -> (B, A, L, L) row log-softmax of X_a X_a^T / sqrt(d).

    Split a is the contiguous chunk x[..., a*d:(a+1)*d], d = D / A. Keys with
    key_valid == False get -inf before the softmax.
    """
    B, L, D = x.shape
    d = D // splits
    xa = x.reshape(B, L, splits, d).transpose(1, 2)  # (B, A, L, d)
    scores = xa @ xa.transpose(-1, -2) / math.sqrt(d)  # (B, A, L, L)
    scores = scores.masked_fill(~key_valid[:, None, None, :], float("-inf"))
    return scores.log_softmax(dim=-1)


def relation_kl(
    teacher: torch.Tensor, student: torch.Tensor, splits: int, mask: Optional[torch.Tensor]
) -> torch.Tensor:
    """Mean over valid (b, a, i) rows of KL(rel(teacher)_bai || rel(student)_bai).

    A row i is valid when mask[b, i] is true; padded keys are excluded from
    every softmax. A fully padded sequence contributes no rows; its keys are
    treated as valid only to keep its (unused) softmaxes finite.
    """
    acc = torch.float64 if torch.float64 in (teacher.dtype, student.dtype) else torch.float32
    t, s = teacher.to(acc), student.to(acc)
    B, L, _ = t.shape
    if mask is None:
        mask = torch.ones(B, L, dtype=torch.bool, device=t.device)
    else:  # padded positions are never read: they may hold anything, NaN too
        t, s = t.masked_fill(~mask[..., None], 0.0), s.masked_fill(~mask[..., None], 0.0)
    key_valid = mask | ~mask.any(dim=1, keepdim=True)
    log_p = relation_log_probs(t, splits, key_valid)
    log_q = relation_log_probs(s, splits, key_valid)
    # At padded keys p = 0 and both logs are -inf: take 0 there instead of
    # 0 * (-inf - -inf) = nan, which would also poison the gradients.
    keys = key_valid[:, None, None, :]
    diff = torch.where(keys, log_p, 0.0) - torch.where(keys, log_q, 0.0)
    row_kl = (log_p.exp() * diff).sum(dim=-1)  # (B, A, L)
    rows = mask[:, None, :].to(acc)  # padded query rows weigh 0
    n_rows = rows.sum() * splits
    return (row_kl * rows).sum() / n_rows.clamp_min(1.0)


def sample_relation_kl(teacher: torch.Tensor, student: torch.Tensor) -> torch.Tensor:
    """L_SS: the B x B relation of [CLS] vectors is the token relation of a (1, B, D) tensor."""
    return relation_kl(teacher[None], student[None], 1, None)


def sample_contrastive(
    teacher: torch.Tensor,
    student: torch.Tensor,
    labels: Optional[torch.Tensor],
    temperature: float,
    base_temperature: float,
) -> torch.Tensor:
    """L_SC, supervised contrastive loss over two views (Khosla et al. as in the authors' code).

    X = [normalize(student); normalize(teacher)] is (2B, D). For anchor i the
    positives P(i) are every j != i with the same label (the other view of the
    same sample always is one; with labels=None it is the only one).
        loss_i = -(1/|P(i)|) sum_{p in P(i)} log softmax_{j != i}(X_i . X_j / tau)_p
        L_SC   = (tau / base_tau) * mean_i loss_i
    """
    acc = torch.float64 if torch.float64 in (teacher.dtype, student.dtype) else torch.float32
    B = teacher.shape[0]
    if B == 0:
        return (teacher.sum() + student.sum()).to(acc) * 0.0
    x = torch.cat([F.normalize(student.to(acc), dim=1), F.normalize(teacher.to(acc), dim=1)], dim=0)
    logits = x @ x.T / temperature  # (2B, 2B)
    self_pair = torch.eye(2 * B, dtype=torch.bool, device=x.device)
    lse = logits.masked_fill(self_pair, float("-inf")).logsumexp(dim=1, keepdim=True)
    log_prob = logits - lse
    ids = torch.arange(B, device=x.device) if labels is None else labels.to(x.device)
    ids = torch.cat([ids, ids])
    positive = (ids[:, None] == ids[None, :]) & ~self_pair
    mean_log_prob_pos = (log_prob * positive).sum(dim=1) / positive.sum(dim=1)
    return -(temperature / base_temperature) * mean_log_prob_pos.mean()


def soft_cross_entropy(
    teacher_logits: torch.Tensor, student_logits: torch.Tensor, temperature: float, reduction: str
) -> torch.Tensor:
    """L_KD: -sum_c softmax(t/T)_c log_softmax(s/T)_c per sample, then reduced."""
    acc = torch.float64 if torch.float64 in (teacher_logits.dtype, student_logits.dtype) else torch.float32
    p = (teacher_logits.to(acc) / temperature).softmax(dim=-1)
    log_q = (student_logits.to(acc) / temperature).log_softmax(dim=-1)
    per_sample = -(p * log_q).sum(dim=-1)  # (B,)
    if reduction == "none":
        return per_sample
    if reduction == "batchmean":
        return per_sample.sum() / max(per_sample.shape[0], 1)
    return per_sample.sum() / max(teacher_logits.numel(), 1)  # "mean": / (B * C), the authors' code
