"""Which implementation of an op runs: "torch", "cpp" or "triton".

"torch" is the eager reference (always present). "cpp" is the compiled CPU
extension `mlkd_fast._C`, listed only when it imported. "triton" needs triton
and either a CUDA device or the interpreter (TRITON_INTERPRET=1, CPU tensors).
Asking for a backend that cannot run the given tensors raises; nothing falls
back silently to a slower path.
"""
from __future__ import annotations

import functools
import os
import warnings

import torch

from mlkd_fast.errors import BackendError, InputError, InputTypeError

BACKENDS = ("torch", "cpp", "triton")


@functools.lru_cache(maxsize=None)
def _load_cpp():
    """(the compiled extension or None, why it did not import)."""
    try:
        from mlkd_fast import _C
    except ImportError as e:
        return None, str(e)
    return _C, ""


def cpp_module():
    """The compiled extension, or None when it was not built."""
    return _load_cpp()[0]


def cpp_import_error() -> str:
    return _load_cpp()[1]


@functools.lru_cache(maxsize=None)
def _load_triton():
    """(the Triton kernel package or None, why not). Not installed is an ImportError; anything else raised
    while importing (a broken install, a driver mismatch) is kept, with its type, to be reported."""
    try:
        import triton  # noqa: F401

        from mlkd_fast import kernels
    except ImportError as e:
        return None, f"triton is not importable ({e})"
    except Exception as e:  # a broken install raises all sorts of errors: say which, never hide it
        return None, f"importing triton failed: {type(e).__name__}: {e}"
    return kernels, ""


def triton_kernels():
    """The Triton kernel package, or None when triton cannot be imported (triton_import_error() says why)."""
    return _load_triton()[0]


def triton_import_error() -> str:
    return _load_triton()[1]


def triton_interpreter() -> bool:
    return os.environ.get("TRITON_INTERPRET", "0") == "1"


# Under torch.compile, what is built and importable is a constant of the process: dynamo calls these eagerly
# instead of tracing into their import caches
@torch.compiler.assume_constant_result
def _cpp_complete() -> bool:
    mod = cpp_module()
    needed = ("relation_kl_forward", "relation_kl_backward", "sample_contrastive_forward", "sample_contrastive_backward")
    return mod is not None and all(hasattr(mod, n) for n in needed)


@torch.compiler.assume_constant_result
def _triton_usable() -> bool:
    return triton_kernels() is not None and (torch.cuda.is_available() or triton_interpreter())


@functools.lru_cache(maxsize=None)
def _warn_once(message: str) -> None:
    warnings.warn(message, RuntimeWarning, stacklevel=3)


def available_backends() -> list:
    """The backends that compute every op on this machine, as a list of names."""
    names = ["torch"]
    if _cpp_complete():
        names.append("cpp")
    if _triton_usable():
        names.append("triton")
    return names


def resolve(backend: str, device: torch.device) -> str:
    """Map a requested backend (or "auto") to the one that will run on `device`."""
    if not isinstance(backend, str):
        raise InputTypeError(f"backend must be a str, got {type(backend).__name__}")
    if backend not in BACKENDS + ("auto",):
        raise InputError(f"backend must be one of 'auto', 'torch', 'cpp', 'triton', got {backend!r}")
    if backend == "auto":
        if device.type == "cuda" and _triton_usable():
            return "triton"
        if device.type == "cuda":
            _warn_once(f"backend='auto' runs CUDA tensors on the eager torch reference (full L x L matrices), "
                       f"not the Triton kernels: {triton_import_error()}")
        if device.type == "cpu" and _cpp_complete():
            return "cpp"
        return "torch"
    if backend == "cpp":
        if not _cpp_complete():
            raise BackendError(
                "backend='cpp' was requested but the compiled extension mlkd_fast._C is not available "
                f"({cpp_import_error() or 'it lacks the relation ops'}); reinstall with `pip install -e .`"
            )
        if device.type != "cpu":
            raise InputError(f"backend='cpp' runs on CPU tensors only, got tensors on {device}")
    if backend == "triton":
        if triton_kernels() is None:
            raise BackendError(f"backend='triton' was requested but {triton_import_error()}; `pip install triton`")
        if device.type == "cpu" and not triton_interpreter():
            raise InputError(
                "backend='triton' needs CUDA tensors (or TRITON_INTERPRET=1 to run the kernels on CPU tensors "
                "in the interpreter), got CPU tensors"
            )
        if device.type not in ("cpu", "cuda"):
            raise InputError(f"backend='triton' runs on CUDA tensors, got tensors on {device}")
    return backend
