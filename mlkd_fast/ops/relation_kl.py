"""relation_kl and sample_relation_kl: the public relation-KL ops.

    relation_kl(teacher (B, L, Dt), student (B, L, Ds), splits, mask (B, L) | None)
        = mean over valid (b, a, i) rows of KL(rel(teacher, A)_bai || rel(student, A)_bai)
    sample_relation_kl(teacher (B, Dt), student (B, Ds))
        = relation_kl(teacher[None], student[None], 1)   (L_SS over the B x B batch relation)

Validation happens here once, then the resolved backend computes.
"""
from __future__ import annotations

from typing import Optional, Tuple

import torch

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
    if name == "triton":
        B, L = teacher.shape[:2]
        if B == 0 or L == 0:  # no rows: the loss is 0 (a zero-size grid cannot launch)
            return (teacher.sum() + student.sum()).to(torch.float32) * 0.0
        if mask is not None:  # padded positions are never read (the C++ kernels zero them while packing)
            teacher = teacher.masked_fill(~mask[..., None], 0.0)
            student = student.masked_fill(~mask[..., None], 0.0)
    else:
        teacher, student = _compute_inputs(teacher, student)
    return _relation_kl_fused(teacher, student, splits, mask, name)[0]


def _compute_inputs(teacher, student):
    """Both inputs in the accumulation dtype (fp64 if either is fp64, else fp32), differentiably: fp16/bf16 are
    converted once here (autograd casts their gradients back); fp32/fp64 inputs pass through with their strides
    (the kernels read any strides, so no copy is made)."""
    acc = _validate.accum_dtype(teacher, student)
    return teacher.to(acc), student.to(acc)


class _CppRelationKL:
    """backend "cpp": the fused one-pass forward and the recomputing backward of csrc/relation_tiles.h, inputs
    in the accumulation dtype; saved: O(B*A*L) row statistics (row maxima, log-sums, KL: 5 per row)."""

    @staticmethod
    def forward(teacher, student, splits, mask):
        return backends.cpp_module().relation_kl_forward(teacher, student, splits, mask)

    @staticmethod
    def backward(teacher, student, splits, mask, stats, grad, teacher_grad):
        g_t, g_s = backends.cpp_module().relation_kl_backward(teacher, student, splits, mask, stats, float(grad),
                                                               teacher_grad)
        return (g_t if teacher_grad else teacher.new_empty(0)), g_s

    @staticmethod
    def fake(teacher, splits):
        B, L = teacher.shape[0], teacher.shape[1]
        return teacher.new_empty(()), teacher.new_empty((B, splits, L, 5))  # csrc/bindings.cpp kStats


class _TritonRelationKL:
    """backend "triton": kernels/relation_kl.py (fp32/fp16/bf16 inputs, fp32 loss); saved: KL, lse_t, lse_s."""

    @staticmethod
    def forward(teacher, student, splits, mask):
        from mlkd_fast.kernels import relation_kl as kernels

        return kernels.forward(teacher, student, splits, mask)

    @staticmethod
    def backward(teacher, student, splits, mask, stats, grad, teacher_grad):
        from mlkd_fast.kernels import relation_kl as kernels

        return kernels.backward(teacher, student, splits, mask, stats, grad, teacher_grad)

    @staticmethod
    def fake(teacher, splits):
        B, L = teacher.shape[0], teacher.shape[1]
        return teacher.new_empty((), dtype=torch.float32), teacher.new_empty((3, B, splits, L), dtype=torch.float32)


# The fused backends of relation_kl: one PyTorch custom op over this table (torch.compile traces through it,
# register_fake gives its shapes per backend, its autograd is registered once). Only the inputs and the
# backend's row statistics are saved for the backward, which recomputes the relations.
FUSED = {"cpp": _CppRelationKL, "triton": _TritonRelationKL}


@torch.library.custom_op("mlkd_fast::relation_kl_fused", mutates_args=())
def _relation_kl_fused(teacher: torch.Tensor, student: torch.Tensor, splits: int, mask: Optional[torch.Tensor],
                       backend: str) -> Tuple[torch.Tensor, torch.Tensor]:
    loss, stats = FUSED[backend].forward(teacher, student, splits, mask)
    return loss, stats


@_relation_kl_fused.register_fake
def _(teacher, student, splits, mask, backend):
    return FUSED[backend].fake(teacher, splits)


@torch.library.custom_op("mlkd_fast::relation_kl_fused_backward", mutates_args=())
def _relation_kl_fused_backward(teacher: torch.Tensor, student: torch.Tensor, splits: int,
                                mask: Optional[torch.Tensor], stats: torch.Tensor, grad: torch.Tensor,
                                teacher_grad: bool, backend: str) -> Tuple[torch.Tensor, torch.Tensor]:
    return FUSED[backend].backward(teacher, student, splits, mask, stats, grad, teacher_grad)


@_relation_kl_fused_backward.register_fake
def _(teacher, student, splits, mask, stats, grad, teacher_grad, backend):
    return (torch.empty_like(teacher) if teacher_grad else teacher.new_empty(0)), torch.empty_like(student)


def _relation_kl_setup(ctx, inputs, output):
    teacher, student, splits, mask, backend = inputs
    ctx.save_for_backward(teacher, student, mask, output[1])
    ctx.splits, ctx.backend = splits, backend
    ctx.mark_non_differentiable(output[1])


def _relation_kl_backward(ctx, grad, _grad_stats):
    teacher, student, mask, stats = ctx.saved_tensors
    need_t, need_s = ctx.needs_input_grad[0], ctx.needs_input_grad[1]
    if not (need_t or need_s):
        return None, None, None, None, None
    g_t, g_s = _relation_kl_fused_backward(teacher, student, ctx.splits, mask, stats, grad, need_t, ctx.backend)
    return (g_t if need_t else None), g_s, None, None, None


_relation_kl_fused.register_autograd(_relation_kl_backward, setup_context=_relation_kl_setup)
