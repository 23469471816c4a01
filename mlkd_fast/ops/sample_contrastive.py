"""sample_contrastive: L_SC, the supervised two-view contrastive loss (METHOD.md, stage 2)."""
from __future__ import annotations

import torch

from mlkd_fast import _validate, backends
from mlkd_fast.ops import reference


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
    if name == "triton":
        from mlkd_fast.kernels.sample_contrastive import sample_contrastive as triton_sample_contrastive

        return triton_sample_contrastive(teacher, student, labels, temperature, base_temperature)
    raise NotImplementedError(f"backend {name!r} is not wired for sample_contrastive")
