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
    return _sample_contrastive_cpp(anchors, ids, 1.0 / temperature, temperature / base_temperature)[0]


# backend="cpp" as PyTorch custom ops: loss = scale * mean_i (lse_i - mean positive logit of anchor i) over the
# anchors (N, D), fused in csrc/contrastive_tiles.h; the backward recomputes the logits from the saved row stats.
@torch.library.custom_op("mlkd_fast::sample_contrastive_cpp", mutates_args=())
def _sample_contrastive_cpp(anchors: torch.Tensor, ids: torch.Tensor, inv_tau: float,
                            scale: float) -> Tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    loss_row, lse, inv_pos = backends.cpp_module().sample_contrastive_forward(anchors, ids, inv_tau)
    return loss_row.sum() * (scale / anchors.shape[0]), lse, inv_pos


@_sample_contrastive_cpp.register_fake
def _(anchors, ids, inv_tau, scale):
    N = anchors.shape[0]
    return anchors.new_empty(()), anchors.new_empty((N,)), anchors.new_empty((N,))


@torch.library.custom_op("mlkd_fast::sample_contrastive_cpp_backward", mutates_args=())
def _sample_contrastive_cpp_backward(anchors: torch.Tensor, ids: torch.Tensor, lse: torch.Tensor,
                                     inv_pos: torch.Tensor, grad: torch.Tensor, inv_tau: float,
                                     scale: float) -> torch.Tensor:
    grad_scale = float(grad) * scale / anchors.shape[0]
    return backends.cpp_module().sample_contrastive_backward(anchors, ids, lse, inv_pos, grad_scale, inv_tau)


@_sample_contrastive_cpp_backward.register_fake
def _(anchors, ids, lse, inv_pos, grad, inv_tau, scale):
    return torch.empty_like(anchors)


def _contrastive_setup(ctx, inputs, output):
    anchors, ids, inv_tau, scale = inputs
    ctx.save_for_backward(anchors, ids, output[1], output[2])
    ctx.inv_tau, ctx.scale = inv_tau, scale
    ctx.mark_non_differentiable(output[1], output[2])


def _contrastive_backward(ctx, grad, _grad_lse, _grad_pos):
    anchors, ids, lse, inv_pos = ctx.saved_tensors
    return _sample_contrastive_cpp_backward(anchors, ids, lse, inv_pos, grad, ctx.inv_tau, ctx.scale), None, None, None


_sample_contrastive_cpp.register_autograd(_contrastive_backward, setup_context=_contrastive_setup)
