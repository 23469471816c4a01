"""Writes that a crash cannot leave half done: files through a temporary name and a rename, model folders
through a swap, and the hook the tests use to crash at each step of either.

A folder cannot be renamed over another, so a model folder is saved as
`<dest>.tmp` and swapped in: with Linux's renameat2(RENAME_EXCHANGE) in one
atomic step; elsewhere in two (dest -> dest.old, tmp -> dest), after which
`recover_model_dir` (run before every save and at every resume) puts back
whichever complete model a crash between the two left behind.
"""
from __future__ import annotations

import contextlib
import ctypes
import errno
import json
import os
import shutil
from typing import Callable, Optional

from mlkd_fast.errors import DiskFullError

# Fault injection for the tests: called with the name of each step of a write; a hook that raises there
# simulates a crash at that instant. None in normal use.
FAULT_HOOK: Optional[Callable[[str], None]] = None
COMPLETE = ".mlkd_complete"  # marker written last into a temporary model folder: the folder is whole


def fault_point(name: str) -> None:
    if FAULT_HOOK is not None:
        FAULT_HOOK(name)


def fsync_dir(path: str) -> None:
    """Make a rename inside `path` durable (POSIX: the directory entry itself must reach the disk)."""
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def _disk_full(e: OSError, what: str) -> DiskFullError:
    return DiskFullError(errno.ENOSPC, f"no space left on device while writing {what}: free some space and run "
                                       "again (--resume continues from the last checkpoint; the files written before "
                                       f"this one are intact) ({e.strerror or e})")


def write_temp(path: str, data: bytes) -> str:
    """data -> `path.tmp.<pid>`, flushed to disk; returns that temporary path (to be renamed over path). A full
    disk removes the temporary file and raises DiskFullError (path itself is untouched)."""
    os.makedirs(os.path.dirname(path) or ".", exist_ok=True)
    tmp = f"{path}.tmp.{os.getpid()}"
    try:
        with open(tmp, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
    except OSError as e:
        if e.errno != errno.ENOSPC:
            raise
        with contextlib.suppress(OSError):
            os.remove(tmp)
        raise _disk_full(e, path) from e
    return tmp


def write_bytes(path: str, data: bytes) -> None:
    """data -> path via `path.tmp.<pid>`, flushed to disk, then renamed over path."""
    tmp = write_temp(path, data)
    fault_point("file:written-tmp")
    os.replace(tmp, path)
    fsync_dir(os.path.dirname(path) or ".")


def save_json(path: str, obj) -> None:
    """JSON written atomically (never half-written)."""
    write_bytes(path, (json.dumps(obj, indent=2) + "\n").encode("utf-8"))


def _exchange(a: str, b: str) -> bool:
    """Atomically swap two paths with renameat2(RENAME_EXCHANGE); False where the OS or filesystem cannot."""
    try:
        fn = ctypes.CDLL(None, use_errno=True).renameat2
    except (OSError, AttributeError):
        return False
    fn.argtypes = [ctypes.c_int, ctypes.c_char_p, ctypes.c_int, ctypes.c_char_p, ctypes.c_uint]
    at_fdcwd, rename_exchange = -100, 2
    return fn(at_fdcwd, os.fsencode(a), at_fdcwd, os.fsencode(b), rename_exchange) == 0


USE_EXCHANGE = True  # the tests turn it off to exercise the two-rename path


def recover_model_dir(dest: str) -> None:
    """Finish or undo a model save that a crash interrupted, leaving one complete `dest` and no leftovers."""
    tmp, old = dest + ".tmp", dest + ".old"
    if not os.path.exists(dest):
        if os.path.isfile(os.path.join(tmp, COMPLETE)):
            os.replace(tmp, dest)  # the new model was complete: it wins
        elif os.path.isdir(old):
            os.replace(old, dest)  # crashed before the new one was whole: the old one comes back
    for leftover in (tmp, old):
        if os.path.exists(leftover):
            shutil.rmtree(leftover)
    marker = os.path.join(dest, COMPLETE)
    if os.path.exists(marker):
        os.remove(marker)


def save_model_atomic(model, dest: str, tokenizer=None) -> str:
    """save_pretrained (+ tokenizer) so that at every instant `dest` is the old or the new complete model."""
    recover_model_dir(dest)
    tmp, old = dest + ".tmp", dest + ".old"
    try:
        model.save_pretrained(tmp)
        if tokenizer is not None:
            tokenizer.save_pretrained(tmp)
    except OSError as e:
        if e.errno != errno.ENOSPC:
            raise
        shutil.rmtree(tmp, ignore_errors=True)  # dest still holds the previous complete model
        raise _disk_full(e, dest) from e
    fault_point("model:saved-tmp")
    with open(os.path.join(tmp, COMPLETE), "w") as f:
        f.flush()
        os.fsync(f.fileno())
    fault_point("model:marked-complete")
    parent = os.path.dirname(os.path.abspath(dest))
    if not os.path.exists(dest):
        os.replace(tmp, dest)
    elif USE_EXCHANGE and _exchange(tmp, dest):
        fault_point("model:exchanged")
    else:
        os.replace(dest, old)
        fault_point("model:old-aside")
        os.replace(tmp, dest)
    fsync_dir(parent)
    fault_point("model:swapped")
    recover_model_dir(dest)  # drops the old copy and the marker
    return dest


__all__ = ["FAULT_HOOK", "fault_point", "write_temp", "write_bytes", "save_json", "save_model_atomic", "recover_model_dir", "fsync_dir"]
