"""sample_contrastive: L_SC, the supervised two-view contrastive loss (docs/method.md, stage 2)."""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch.autograd.function import once_differentiable

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
    if name == "cpp":
        return _cpp_sample_contrastive(teacher, student, labels, temperature, base_temperature)
    if name == "triton":
        from mlkd_fast.kernels.sample_contrastive import (
            sample_contrastive as triton_sample_contrastive,
        )

        return triton_sample_contrastive(teacher, student, labels, temperature, base_temperature)
    raise NotImplementedError(f"backend {name!r} is not wired for sample_contrastive")


def _cpp_sample_contrastive(teacher, student, labels, temperature, base_temperature):
    """backend="cpp": the L2 normalisation stays in torch (autograd handles its
    backward); the (2B x 2B) logits, their log-sum-exps and the positive terms
    are fused in csrc/contrastive_tiles.h and never materialised."""
    acc = _validate.accum_dtype(teacher, student)
    B = teacher.shape[0]
    if B == 0:  # no anchors: the mean over none is defined as 0, as in the reference
        return (teacher.sum() + student.sum()).to(acc) * 0.0
    anchors = torch.cat([F.normalize(student.to(acc), dim=1), F.normalize(teacher.to(acc), dim=1)], dim=0)
    ids = torch.arange(B) if labels is None else labels.cpu()
    ids = torch.cat([ids, ids]).to(torch.int64)
    return _SampleContrastiveCpp.apply(anchors, ids, 1.0 / temperature, temperature / base_temperature)


class _SampleContrastiveCpp(torch.autograd.Function):
    """loss = scale * mean_i (lse_i - mean positive logit of anchor i) over anchors (N, D)."""

    @staticmethod
    def forward(ctx, anchors, ids, inv_tau, scale):
        x = anchors.detach()
        loss_row, lse, inv_pos = backends.cpp_module().sample_contrastive_forward(x, ids, inv_tau)
        ctx.save_for_backward(x, ids, lse, inv_pos)
        ctx.inv_tau, ctx.scale = inv_tau, scale
        return loss_row.sum() * (scale / x.shape[0])

    @staticmethod
    @once_differentiable
    def backward(ctx, grad):
        x, ids, lse, inv_pos = ctx.saved_tensors
        grad_scale = float(grad) * ctx.scale / x.shape[0]
        gx = backends.cpp_module().sample_contrastive_backward(x, ids, lse, inv_pos, grad_scale, ctx.inv_tau)
        return gx, None, None, None
