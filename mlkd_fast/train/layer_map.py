"""Which teacher layer each student layer learns from (docs/method.md, "Notation")."""
from __future__ import annotations

from typing import Optional, Sequence, Tuple

from mlkd_fast.errors import InputError


def uniform_layer_map(teacher_layers: int, student_layers: int) -> Tuple[int, ...]:
    """Student layer n (1-based) -> teacher layer n * M / N; needs N to divide M."""
    if student_layers < 1 or teacher_layers < 1:
        raise InputError(f"layer counts must be >= 1, got teacher {teacher_layers}, student {student_layers}")
    if teacher_layers % student_layers != 0:
        raise InputError(
            f"teacher has {teacher_layers} layers and student {student_layers}: {teacher_layers} is not a multiple "
            f"of {student_layers}, so give layer_map explicitly (one increasing teacher layer in 1..{teacher_layers} "
            "per student layer)"
        )
    k = teacher_layers // student_layers
    return tuple(n * k for n in range(1, student_layers + 1))


def resolve_layer_map(layer_map: Optional[Sequence[int]], teacher_layers: int, student_layers: int) -> Tuple[int, ...]:
    """Validate a user map (student layer n -> teacher layer map[n-1], 1-based) or build the uniform one."""
    if layer_map is None:
        return uniform_layer_map(teacher_layers, student_layers)
    layer_map = tuple(layer_map)
    if len(layer_map) != student_layers:
        raise InputError(f"layer_map must name one teacher layer per student layer ({student_layers}), got {len(layer_map)}: {layer_map}")
    for m in layer_map:
        if isinstance(m, bool) or not isinstance(m, int) or not 1 <= m <= teacher_layers:
            raise InputError(f"layer_map entries must be teacher layers in 1..{teacher_layers}, got {layer_map}")
    if any(b <= a for a, b in zip(layer_map, layer_map[1:])):
        raise InputError(f"layer_map must be strictly increasing, got {layer_map}")
    return layer_map
