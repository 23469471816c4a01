"""The library's own exceptions.

A user error (a bad argument, file, setting or checkpoint) is an `InputError`
or `InputTypeError`: the CLI prints its one-line message and exits with 2.
Anything else is a bug or an environment failure and keeps its traceback.
Each class also subclasses the built-in a caller would expect, so code that
catches ValueError / TypeError / RuntimeError keeps working.
"""


class MLKDError(Exception):
    """Base of every exception this library raises on purpose."""


class InputError(MLKDError, ValueError):
    """A value, shape, file, setting or checkpoint the user gave is not usable; the message says which and why."""


class InputTypeError(MLKDError, TypeError):
    """An argument is the wrong kind of object or has the wrong dtype."""


class BackendError(MLKDError, RuntimeError):
    """A backend that was asked for cannot run here (not built, not importable)."""


class DivergenceError(MLKDError, RuntimeError):
    """Training produced a non-finite loss, gradient or prediction; the run stopped before saving it."""


class DiskFullError(MLKDError, OSError):
    """A checkpoint, model or cache write ran out of disk space; what was written before it is intact."""


class RunInterrupted(MLKDError, KeyboardInterrupt):
    """SIGINT/SIGTERM stopped a run at a step boundary, after writing a checkpoint to resume from."""


__all__ = ["MLKDError", "InputError", "InputTypeError", "BackendError", "DivergenceError", "DiskFullError", "RunInterrupted"]
