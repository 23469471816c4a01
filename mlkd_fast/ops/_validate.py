"""Argument checks shared by every backend of every op.

Each check raises TypeError (wrong kind of object or dtype) or ValueError
(wrong shape, value or device) with a message naming the argument and what
was expected, so a bad call fails before any kernel runs.
"""
from __future__ import annotations

import numbers
from typing import Optional

import torch

from mlkd_fast.errors import InputError, InputTypeError


def _shape(t: torch.Tensor) -> str:
    return "(" + ", ".join(str(s) for s in t.shape) + ")"


def float_tensor(x, name: str) -> torch.Tensor:
    if not isinstance(x, torch.Tensor):
        raise InputTypeError(f"{name} must be a torch.Tensor, got {type(x).__name__}")
    if not x.is_floating_point():
        raise InputTypeError(f"{name} must be a floating-point tensor (fp16, bf16, fp32 or fp64), got dtype {x.dtype}")
    return x


def rank(x: torch.Tensor, name: str, ndim: int, layout: str) -> None:
    if x.dim() != ndim:
        raise InputError(f"{name} must be {ndim}-D {layout}, got shape {_shape(x)}")


def same_device(**tensors) -> torch.device:
    devices = {n: t.device for n, t in tensors.items() if t is not None}
    first = next(iter(devices.values()))
    if any(d != first for d in devices.values()):
        listed = ", ".join(f"{n} on {d}" for n, d in devices.items())
        raise InputError(f"all inputs must be on the same device, got {listed}")
    return first


def positive_int(x, name: str) -> int:
    if isinstance(x, bool) or not isinstance(x, numbers.Integral):
        raise InputTypeError(f"{name} must be an int, got {type(x).__name__}")
    if x < 1:
        raise InputError(f"{name} must be >= 1, got {x}")
    return int(x)


def positive_float(x, name: str) -> float:
    if isinstance(x, bool) or not isinstance(x, numbers.Real):
        raise InputTypeError(f"{name} must be a real number, got {type(x).__name__}")
    if not x > 0 or x != x or x == float("inf"):
        raise InputError(f"{name} must be a finite number > 0, got {x}")
    return float(x)


def mask(m, name: str, batch: int, length: int) -> Optional[torch.Tensor]:
    """Return the mask as a contiguous bool (B, L) tensor, or None."""
    if m is None:
        return None
    if not isinstance(m, torch.Tensor):
        raise InputTypeError(f"{name} must be a torch.Tensor or None, got {type(m).__name__}")
    if m.is_floating_point() or m.is_complex():
        raise InputTypeError(f"{name} must be a bool or integer tensor (1 = real token, 0 = padding), got dtype {m.dtype}")
    if tuple(m.shape) != (batch, length):
        raise InputError(f"{name} must have shape (B, L) = ({batch}, {length}), got {_shape(m)}")
    return (m != 0).contiguous()


def labels(lab, name: str, batch: int) -> Optional[torch.Tensor]:
    if lab is None:
        return None
    if not isinstance(lab, torch.Tensor):
        raise InputTypeError(f"{name} must be a torch.Tensor or None, got {type(lab).__name__}")
    if lab.is_floating_point() or lab.is_complex():
        raise InputTypeError(
            f"{name} must be an integer class-id tensor, got dtype {lab.dtype} "
            "(for regression tasks pass labels=None: the positives are then the other view only)"
        )
    if lab.dim() != 1 or lab.shape[0] != batch:
        raise InputError(f"{name} must have shape (B,) = ({batch},), got {_shape(lab)}")
    return lab.long().contiguous()


def relation_inputs(teacher, student, splits, m):
    """Checks for relation_kl: (B, L, Dt), (B, L, Ds), splits, mask (B, L)."""
    float_tensor(teacher, "teacher")
    float_tensor(student, "student")
    rank(teacher, "teacher", 3, "(B, L, Dt)")
    rank(student, "student", 3, "(B, L, Ds)")
    if teacher.shape[:2] != student.shape[:2]:
        raise InputError(
            f"teacher and student must agree on (B, L), got teacher {_shape(teacher)} and student {_shape(student)}"
        )
    splits = positive_int(splits, "splits")
    for name, t in (("teacher", teacher), ("student", student)):
        if t.shape[2] % splits != 0:
            raise InputError(
                f"{name} hidden size {t.shape[2]} is not divisible by splits={splits}: "
                f"every split must have the same width"
            )
    same_device(teacher=teacher, student=student, mask=m if isinstance(m, torch.Tensor) else None)
    m = mask(m, "mask", teacher.shape[0], teacher.shape[1])
    return splits, m


def sample_inputs(teacher, student, same_width: bool):
    float_tensor(teacher, "teacher")
    float_tensor(student, "student")
    rank(teacher, "teacher", 2, "(B, Dt)")
    rank(student, "student", 2, "(B, Ds)")
    if teacher.shape[0] != student.shape[0]:
        raise InputError(
            f"teacher and student must have the same batch size B, got teacher {_shape(teacher)} and student {_shape(student)}"
        )
    if same_width and teacher.shape[1] != student.shape[1]:
        raise InputError(
            f"teacher and student must have the same width D (project the student first), "
            f"got teacher {_shape(teacher)} and student {_shape(student)}"
        )
    same_device(teacher=teacher, student=student)


def logits_pair(teacher_logits, student_logits):
    float_tensor(teacher_logits, "teacher_logits")
    float_tensor(student_logits, "student_logits")
    rank(teacher_logits, "teacher_logits", 2, "(B, C)")
    rank(student_logits, "student_logits", 2, "(B, C)")
    if teacher_logits.shape != student_logits.shape:
        raise InputError(
            f"teacher_logits and student_logits must have the same shape (B, C), "
            f"got {_shape(teacher_logits)} and {_shape(student_logits)}"
        )
    same_device(teacher_logits=teacher_logits, student_logits=student_logits)


def accum_dtype(*tensors: torch.Tensor) -> torch.dtype:
    """fp64 inputs accumulate in fp64, everything else in fp32."""
    return torch.float64 if any(t.dtype == torch.float64 for t in tensors) else torch.float32
