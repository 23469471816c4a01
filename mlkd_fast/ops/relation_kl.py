"""relation_kl and sample_relation_kl: the public relation-KL ops.

    relation_kl(teacher (B, L, Dt), student (B, L, Ds), splits, mask (B, L) | None)
        = mean over valid (b, a, i) rows of KL(rel(teacher, A)_bai || rel(student, A)_bai)
    sample_relation_kl(teacher (B, Dt), student (B, Ds))
        = relation_kl(teacher[None], student[None], 1)   (L_SS over the B x B batch relation)

Validation happens here once, then the resolved backend computes.
"""
from __future__ import annotations

import torch

from mlkd_fast import _validate, backends
from mlkd_fast.ops import reference


def relation_kl(teacher, student, splits, mask=None, *, backend: str = "auto") -> torch.Tensor:
    """Relation KL of METHOD.md's rel(): L_EMB (splits=1) and L_MHA (splits=A) for one layer pair.

    Returns a 0-dim tensor (float32; float64 for float64 inputs). Zero valid
    rows give 0.0. Differentiable w.r.t. student, and teacher when it requires grad.
    """
    splits, mask = _validate.relation_inputs(teacher, student, splits, mask)
    name = backends.resolve(backend, teacher.device)
    return _run(name, teacher, student, splits, mask)


def sample_relation_kl(teacher, student, *, backend: str = "auto") -> torch.Tensor:
    """L_SS: KL between the teacher's and student's B x B [CLS] similarity relations (mean over rows)."""
    _validate.sample_inputs(teacher, student, same_width=False)
    name = backends.resolve(backend, teacher.device)
    return _run(name, teacher[None], student[None], 1, None)


def _run(name: str, teacher, student, splits: int, mask):
    if name == "torch":
        return reference.relation_kl(teacher, student, splits, mask)
    if name == "triton":
        from mlkd_fast.kernels.relation_kl import relation_kl as triton_relation_kl

        return triton_relation_kl(teacher, student, splits, mask)
    raise NotImplementedError(f"backend {name!r} is not wired for relation_kl")
