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
    if name == "cpp":
        return _relation_kl_cpp(*_compute_inputs(teacher, student), splits, mask)[0]
    if name == "triton":
        from mlkd_fast.kernels.relation_kl import relation_kl as triton_relation_kl

        if mask is not None:  # padded positions are never read (the C++ kernels zero them while packing)
            teacher = teacher.masked_fill(~mask[..., None], 0.0)
            student = student.masked_fill(~mask[..., None], 0.0)
        return triton_relation_kl(teacher, student, splits, mask)
    raise NotImplementedError(f"backend {name!r} is not wired for relation_kl")


def _compute_inputs(teacher, student):
    """Both inputs in the accumulation dtype (fp64 if either is fp64, else fp32), differentiably: fp16/bf16 are
    converted once here (autograd casts their gradients back); fp32/fp64 inputs pass through with their strides
    (the kernels read any strides, so no copy is made)."""
    acc = _validate.accum_dtype(teacher, student)
    return teacher.to(acc), student.to(acc)


# backend="cpp" as PyTorch custom ops (torch.compile traces through them; register_fake gives their shapes):
# the fused one-pass forward and the recomputing backward of csrc/relation_tiles.h. Only the inputs and
# O(B*A*L) row statistics (row maxima, log-sums, KL: STATS per row) are saved for the backward.
STATS = 5  # csrc/bindings.cpp kStats


@torch.library.custom_op("mlkd_fast::relation_kl_cpp", mutates_args=())
def _relation_kl_cpp(teacher: torch.Tensor, student: torch.Tensor, splits: int,
                     mask: Optional[torch.Tensor]) -> Tuple[torch.Tensor, torch.Tensor]:
    loss, stats = backends.cpp_module().relation_kl_forward(teacher, student, splits, mask)
    return loss, stats


@_relation_kl_cpp.register_fake
def _(teacher, student, splits, mask):
    B, L = teacher.shape[0], teacher.shape[1]
    return teacher.new_empty(()), teacher.new_empty((B, splits, L, STATS))


@torch.library.custom_op("mlkd_fast::relation_kl_cpp_backward", mutates_args=())
def _relation_kl_cpp_backward(teacher: torch.Tensor, student: torch.Tensor, splits: int, mask: Optional[torch.Tensor],
                              stats: torch.Tensor, grad: torch.Tensor,
                              teacher_grad: bool) -> Tuple[torch.Tensor, torch.Tensor]:
    g_t, g_s = backends.cpp_module().relation_kl_backward(teacher, student, splits, mask, stats, float(grad),
                                                           teacher_grad)
    return (g_t if teacher_grad else teacher.new_zeros(0)), g_s


@_relation_kl_cpp_backward.register_fake
def _(teacher, student, splits, mask, stats, grad, teacher_grad):
    return (torch.empty_like(teacher) if teacher_grad else teacher.new_empty(0)), torch.empty_like(student)


def _relation_kl_setup(ctx, inputs, output):
    teacher, student, splits, mask = inputs
    ctx.save_for_backward(teacher, student, mask, output[1])
    ctx.splits = splits
    ctx.mark_non_differentiable(output[1])


def _relation_kl_backward(ctx, grad, _grad_stats):
    teacher, student, mask, stats = ctx.saved_tensors
    need_t, need_s = ctx.needs_input_grad[0], ctx.needs_input_grad[1]
    if not (need_t or need_s):
        return None, None, None, None
    g_t, g_s = _relation_kl_cpp_backward(teacher, student, ctx.splits, mask, stats, grad, need_t)
    return (g_t if need_t else None), g_s, None, None


_relation_kl_cpp.register_autograd(_relation_kl_backward, setup_context=_relation_kl_setup)
