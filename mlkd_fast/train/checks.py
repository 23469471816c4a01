"""Value checks shared by the configs and the loss terms' settings: a bad value is an error naming it."""
from __future__ import annotations

from mlkd_fast.errors import InputError, InputTypeError


def check_int(name: str, value, minimum: int) -> None:
    if isinstance(value, bool) or not isinstance(value, int):
        raise InputTypeError(f"{name} must be an int, got {type(value).__name__} ({value!r})")
    if value < minimum:
        raise InputError(f"{name} must be >= {minimum}, got {value}")


def check_float(name: str, value, minimum: float = 0.0, strict: bool = True) -> None:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise InputTypeError(f"{name} must be a number, got {type(value).__name__} ({value!r})")
    if value != value or (value <= minimum if strict else value < minimum) or value == float("inf"):
        raise InputError(f"{name} must be a finite number {'>' if strict else '>='} {minimum}, got {value}")


__all__ = ["check_int", "check_float"]
