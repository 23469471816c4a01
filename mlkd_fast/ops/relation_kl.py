"""relation_kl and sample_relation_kl: the public relation-KL ops.

    relation_kl(teacher (B, L, Dt), student (B, L, Ds), splits, mask (B, L) | None)
        = mean over valid (b, a, i) rows of KL(rel(teacher, A)_bai || rel(student, A)_bai)
    sample_relation_kl(teacher (B, Dt), student (B, Ds))
        = relation_kl(teacher[None], student[None], 1)   (L_SS over the B x B batch relation)

Validation happens here once, then the resolved backend computes.
"""
from __future__ import annotations

import torch
from torch.autograd.function import once_differentiable

from mlkd_fast.ops import _validate, backends, reference


def relation_kl(teacher, student, splits, mask=None, *, backend: str = "auto") -> torch.Tensor:
    """Relation KL of rel() (docs/method.md): L_EMB (splits=1) and L_MHA (splits=A) for one layer pair.

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
    if name == "cpp":
        return _RelationKLCpp.apply(teacher, student, splits, mask)
    if name == "triton":
        from mlkd_fast.kernels.relation_kl import relation_kl as triton_relation_kl

        if mask is not None:  # padded positions are never read (the C++ kernels zero them while packing)
            teacher = teacher.masked_fill(~mask[..., None], 0.0)
            student = student.masked_fill(~mask[..., None], 0.0)
        return triton_relation_kl(teacher, student, splits, mask)
    raise NotImplementedError(f"backend {name!r} is not wired for relation_kl")


def _compute_inputs(teacher, student):
    """Both inputs in the accumulation dtype (fp64 if either is fp64, else fp32).

    fp16/bf16 are converted once here; fp32/fp64 inputs pass through with
    their strides (the kernels read any strides, so no copy is made).
    """
    acc = _validate.accum_dtype(teacher, student)
    return teacher.detach().to(acc), student.detach().to(acc)


class _RelationKLCpp(torch.autograd.Function):
    """backend="cpp": the fused one-pass forward and the recomputing backward of
    csrc/relation_tiles.h. Saves only the inputs and O(B*A*L) row statistics
    (row maxima, log-sums, KL)."""

    @staticmethod
    def forward(ctx, teacher, student, splits, mask):
        t, s = _compute_inputs(teacher, student)
        loss, stats = backends.cpp_module().relation_kl_forward(t, s, splits, mask)
        ctx.save_for_backward(t, s, mask, stats)
        ctx.splits = splits
        ctx.dtypes = (teacher.dtype, student.dtype)
        return loss

    @staticmethod
    @once_differentiable
    def backward(ctx, grad):
        t, s, mask, stats = ctx.saved_tensors
        need_t, need_s = ctx.needs_input_grad[0], ctx.needs_input_grad[1]
        if not (need_t or need_s):
            return None, None, None, None
        g_t, g_s = backends.cpp_module().relation_kl_backward(
            t, s, ctx.splits, mask, stats, float(grad), bool(need_t)
        )
        g_t = g_t.to(ctx.dtypes[0]) if need_t else None
        g_s = g_s.to(ctx.dtypes[1]) if need_s else None
        return g_t, g_s, None, None
