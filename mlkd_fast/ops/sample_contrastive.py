"""sample_contrastive: L_SC, the supervised two-view contrastive loss (docs/method.md, stage 2)."""
from __future__ import annotations

import torch
import torch.nn.functional as F
from typing import Tuple

from mlkd_fast.ops import _validate, backends, reference


def sample_contrastive(
    teacher,
    student,
    labels=None,
    *,
    temperature: float = 0.07,
    base_temperature: float = 1.0,
    backend: str = "auto",
) -> torch.Tensor:
    """Supervised contrastive loss with anchors [normalize(student); normalize(teacher)].

    teacher (B, D) and student (B, D) (project the student to the teacher's
    width first). labels (B,) integer class ids, or None for regression tasks
    (then each anchor's only positive is its other view). Scaled by
    temperature / base_temperature as in the authors' code.
    """
    _validate.sample_inputs(teacher, student, same_width=True)
    labels = _validate.labels(labels, "labels", teacher.shape[0])
    if labels is not None:
        _validate.same_device(teacher=teacher, labels=labels)
    temperature = _validate.positive_float(temperature, "temperature")
    base_temperature = _validate.positive_float(base_temperature, "base_temperature")
    name = backends.resolve(backend, teacher.device)
    if name == "torch":
        return reference.sample_contrastive(teacher, student, labels, temperature, base_temperature)
    B = teacher.shape[0]
    if name == "triton":
        from mlkd_fast.kernels import _common

        _common.check_dtypes(teacher=teacher, student=student)
    # the anchors: fp32 for triton whatever the input dtype (N x D is small next to the N x N logits it feeds),
    # the accumulation dtype for cpp; the L2 normalisation stays in torch (autograd handles its backward)
    acc = torch.float32 if name == "triton" else _validate.accum_dtype(teacher, student)
    if B == 0:  # no anchors: the mean over none is defined as 0, as in the reference
        return (teacher.sum() + student.sum()).to(acc) * 0.0
    anchors = torch.cat([F.normalize(student.to(acc), dim=1), F.normalize(teacher.to(acc), dim=1)], dim=0)
    ids = torch.arange(B, device=anchors.device) if labels is None else labels.to(anchors.device, torch.int64)
    ids = torch.cat([ids, ids]).contiguous()
    if name == "cpp":
        ids = ids.cpu()
    return _sample_contrastive_fused(anchors, ids, 1.0 / temperature, temperature / base_temperature, name)[0]


class _CppContrastive:
    """backend "cpp": csrc/contrastive_tiles.h; saved per anchor: the log-sum-exp and 1 / |P(i)|."""

    @staticmethod
    def forward(anchors, ids, inv_tau, scale):
        loss_row, lse, inv_pos = backends.cpp_module().sample_contrastive_forward(anchors, ids, inv_tau)
        return loss_row.sum() * (scale / anchors.shape[0]), torch.stack([lse, inv_pos])

    @staticmethod
    def backward(anchors, ids, stats, grad, inv_tau, scale):
        grad_scale = float(grad) * scale / anchors.shape[0]
        return backends.cpp_module().sample_contrastive_backward(anchors, ids, stats[0], stats[1], grad_scale, inv_tau)

    @staticmethod
    def fake(anchors):
        return anchors.new_empty(()), anchors.new_empty((2, anchors.shape[0]))


class _TritonContrastive:
    """backend "triton": kernels/sample_contrastive.py (fp32 anchors); saved per anchor: LSE and |P(i)|."""

    @staticmethod
    def forward(anchors, ids, inv_tau, scale):
        from mlkd_fast.kernels import sample_contrastive as kernels

        return kernels.forward(anchors, ids, inv_tau, scale)

    @staticmethod
    def backward(anchors, ids, stats, grad, inv_tau, scale):
        from mlkd_fast.kernels import sample_contrastive as kernels

        return kernels.backward(anchors, ids, stats, grad, inv_tau, scale)

    @staticmethod
    def fake(anchors):
        return anchors.new_empty((), dtype=torch.float32), anchors.new_empty((2, anchors.shape[0]), dtype=torch.float32)


# The fused backends of L_SC over the anchors (N, D): loss = scale * mean_i (lse_i - mean positive logit of
# anchor i), the (N x N) logits never stored; one PyTorch custom op over this table, its autograd registered
# once; the backward recomputes the logits from the saved row statistics.
FUSED = {"cpp": _CppContrastive, "triton": _TritonContrastive}


@torch.library.custom_op("mlkd_fast::sample_contrastive_fused", mutates_args=())
def _sample_contrastive_fused(anchors: torch.Tensor, ids: torch.Tensor, inv_tau: float, scale: float,
                              backend: str) -> Tuple[torch.Tensor, torch.Tensor]:
    loss, stats = FUSED[backend].forward(anchors, ids, inv_tau, scale)
    return loss, stats


@_sample_contrastive_fused.register_fake
def _(anchors, ids, inv_tau, scale, backend):
    return FUSED[backend].fake(anchors)


@torch.library.custom_op("mlkd_fast::sample_contrastive_fused_backward", mutates_args=())
def _sample_contrastive_fused_backward(anchors: torch.Tensor, ids: torch.Tensor, stats: torch.Tensor,
                                       grad: torch.Tensor, inv_tau: float, scale: float,
                                       backend: str) -> torch.Tensor:
    return FUSED[backend].backward(anchors, ids, stats, grad, inv_tau, scale)


@_sample_contrastive_fused_backward.register_fake
def _(anchors, ids, stats, grad, inv_tau, scale, backend):
    return torch.empty_like(anchors)


def _contrastive_setup(ctx, inputs, output):
    anchors, ids, inv_tau, scale, backend = inputs
    ctx.save_for_backward(anchors, ids, output[1])
    ctx.inv_tau, ctx.scale, ctx.backend = inv_tau, scale, backend
    ctx.mark_non_differentiable(output[1])


def _contrastive_backward(ctx, grad, _grad_stats):
    anchors, ids, stats = ctx.saved_tensors
    dx = _sample_contrastive_fused_backward(anchors, ids, stats, grad, ctx.inv_tau, ctx.scale, ctx.backend)
    return dx, None, None, None, None


_sample_contrastive_fused.register_autograd(_contrastive_backward, setup_context=_contrastive_setup)
