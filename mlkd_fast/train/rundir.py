"""The output directory of a run: one run at a time (a lock), a fresh start or a resume of the same run
(settings and fingerprints compared), and no leftovers of an interrupted one.

    <output_dir>.lock          held while a run writes into output_dir (pid and host inside)
    <output_dir>/<kind>_config.json, metrics.jsonl, history.json, checkpoint/, model folders
"""
from __future__ import annotations

import contextlib
import glob
import hashlib
import json
import os
import shutil
import socket
from typing import Any, Dict, Iterator, Optional

import numpy as np
import torch

from mlkd_fast.errors import InputError, InputTypeError
from mlkd_fast.train import checkpoint
from mlkd_fast.train.atomic import recover_model_dir, save_json, write_bytes

MODEL_DIRS = ("model", "student", "stage1")  # the model folders a run may keep


def _check_path(output_dir) -> str:
    if not isinstance(output_dir, (str, os.PathLike)) or not str(output_dir):
        raise InputTypeError(f"output_dir must be a directory path, got {output_dir!r}")
    return os.path.abspath(os.fspath(output_dir))


def check_output_dir(output_dir) -> str:
    """Before any work: output_dir is, or can become, a writable folder (its nearest existing ancestor is one)."""
    path = _check_path(output_dir)
    probe = path
    while not os.path.exists(probe):
        probe = os.path.dirname(probe)
    if not os.path.isdir(probe):
        raise InputError(f"output_dir {output_dir!r} cannot be written: {probe!r} is a file, not a folder")
    if not os.access(probe, os.W_OK | os.X_OK):
        raise InputError(f"output_dir {output_dir!r} cannot be written: no write permission in {probe!r}")
    return path


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # alive, owned by someone else
        return True
    return True


_HELD: Dict[str, int] = {}  # lock path -> nesting depth in this process


@contextlib.contextmanager
def run_lock(output_dir) -> Iterator[None]:
    """Hold `<output_dir>.lock` for the block; a second run into the same folder is refused.

    The lock lives beside the folder, not in it, so that --overwrite can empty the folder while holding it.
    A lock whose process is gone (same host) is stale and taken over. Re-entrant within a process: the CLI takes
    it first thing, before loading models or data, and the trainer's own run_lock inside it is then a no-op.
    """
    path = check_output_dir(output_dir).rstrip(os.sep) + ".lock"
    if _HELD.get(path):
        _HELD[path] += 1
        try:
            yield
        finally:
            _HELD[path] -= 1
        return
    try:
        os.makedirs(os.path.dirname(path), exist_ok=True)
    except OSError as e:
        raise InputError(f"output_dir {output_dir!r} cannot be written: {e.strerror or e}") from e
    me = f"{os.getpid()} {socket.gethostname()}"
    while True:
        try:
            fd = os.open(path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
        except FileExistsError:
            try:
                with open(path, encoding="utf-8") as f:
                    pid_text, _, host = f.read().strip().partition(" ")
            except FileNotFoundError:
                continue  # released meanwhile: try again
            pid = int(pid_text) if pid_text.isdigit() else -1
            if host != socket.gethostname():
                raise InputError(f"output_dir {output_dir!r} is locked by a run on host {host!r} (pid {pid}): "
                                 f"if that run is gone, delete {path}") from None
            if pid > 0 and _pid_alive(pid):
                raise InputError(f"output_dir {output_dir!r} is in use by another run (pid {pid}, lock {path}); "
                                 "wait for it to finish or choose another output_dir") from None
            os.remove(path)  # stale: its process is gone
            continue
        with os.fdopen(fd, "w") as f:
            f.write(me + "\n")
        break
    _HELD[path] = 1
    try:
        yield
    finally:
        _HELD.pop(path, None)
        try:
            with open(path, encoding="utf-8") as f:
                if f.read().strip() == me:
                    os.remove(path)
        except FileNotFoundError:
            pass


def prepare_output_dir(output_dir: str, *, resume: bool, overwrite: bool, kind: str) -> Optional[Dict[str, Any]]:
    """Check the output directory before any training: the resume state, or None for a fresh run.

    A fresh run into a non-empty directory needs overwrite=True (which then empties it).
    """
    path = _check_path(output_dir)
    if resume:
        state = checkpoint.load_state(path, kind)
        clean_leftovers(path)
        return state
    if os.path.exists(path):
        if not os.path.isdir(path):
            raise InputError(f"output_dir {output_dir!r} exists and is not a directory")
        if os.listdir(path):
            if not overwrite:
                raise InputError(
                    f"output_dir {output_dir!r} already holds files; pass overwrite=True (--overwrite) to replace them "
                    "or resume=True (--resume) to continue the run"
                )
            shutil.rmtree(path)
    try:
        os.makedirs(path, exist_ok=True)
        probe = os.path.join(path, f".write_test.{os.getpid()}")
        with open(probe, "w"):
            pass
        os.remove(probe)
    except OSError as e:
        raise InputError(f"output_dir {output_dir!r} cannot be written: {e.strerror or e}") from e
    return None


def clean_leftovers(output_dir: str) -> None:
    """What an interrupted run can leave: temporary checkpoint files and half-swapped model folders."""
    for tmp in glob.glob(os.path.join(output_dir, "**", "*.tmp.*"), recursive=True):
        if os.path.isfile(tmp):
            os.remove(tmp)
    for name in MODEL_DIRS:
        recover_model_dir(os.path.join(output_dir, name))


def truncate_metrics(output_dir: str, global_step: int) -> None:
    """Drop the log records of steps after the resumed one: they are replayed, and logged again."""
    path = os.path.join(output_dir, "metrics.jsonl")
    if not os.path.isfile(path):
        return
    keep = []
    with open(path, encoding="utf-8") as f:
        for line in f:
            try:
                record = json.loads(line)
            except json.JSONDecodeError:
                continue  # a line cut by the interruption
            if record.get("step", 0) <= global_step:
                keep.append(line if line.endswith("\n") else line + "\n")
    write_bytes(path, "".join(keep).encode("utf-8"))


def open_run(output_dir: str, run_settings: Dict[str, Any], *, resume: bool, overwrite: bool, kind: str) -> Optional[Dict[str, Any]]:
    """Prepare output_dir for a `kind` run and record what defines it.

    Returns the saved state when resuming (after checking it is the same run: settings, teacher and data
    fingerprints, student shape), else None. Refuses to overwrite without overwrite=True.
    """
    saved = prepare_output_dir(output_dir, resume=resume, overwrite=overwrite, kind=kind)
    if saved is not None:
        checkpoint.check_same_config(saved["config"], run_settings, checkpoint.state_path(output_dir))
        truncate_metrics(output_dir, saved["state"]["global_step"])
    save_json(os.path.join(output_dir, f"{kind}_config.json"), run_settings)
    return saved


@contextlib.contextmanager
def start_run(dist, output_dir: str, settings: Dict[str, Any], *, resume: bool, overwrite: bool, kind: str):
    """The lock and open_run of a run on every rank: rank 0 holds the lock and prepares the folder, the other
    ranks wait for it and read the same checkpoint; an error on rank 0 is raised on every rank (no hang)."""
    with (run_lock(output_dir) if dist.is_main else contextlib.nullcontext()):
        saved, error = None, None
        if dist.is_main:
            try:
                saved = open_run(output_dir, settings, resume=resume, overwrite=overwrite, kind=kind)
            except Exception as e:  # handed to every rank below, then raised everywhere
                error = e
        error = dist.broadcast_object(error)
        if error is not None:
            raise error
        if resume and not dist.is_main:
            saved = checkpoint.load_state(_check_path(output_dir), kind)
        yield saved


def weights_fingerprint(model: torch.nn.Module) -> str:
    """sha256 (16 hex digits) of a model's weights: names, shapes, dtypes and values."""
    h = hashlib.sha256()
    for name, t in model.state_dict().items():
        h.update(f"{name}:{tuple(t.shape)}:{t.dtype};".encode())
        h.update(t.detach().cpu().contiguous().view(-1).view(torch.uint8).numpy().tobytes())
    return h.hexdigest()[:16]


def data_fingerprint(ds) -> str:
    """sha256 (16 hex digits) of a tokenised dataset's token ids, masks and labels, row by row."""
    h = hashlib.sha256()
    for column in ("input_ids", "attention_mask", "token_type_ids", "labels", "start_positions", "end_positions"):
        if column in ds.column_names:
            values = ds[column]
            h.update(column.encode())
            if values and isinstance(values[0], list):
                h.update(np.fromiter((len(v) for v in values), dtype=np.int64, count=len(values)).tobytes())
                h.update(np.fromiter((x for v in values for x in v), dtype=np.int64).tobytes())
            else:
                h.update(np.asarray(values, dtype=np.float64).tobytes())
    return h.hexdigest()[:16]


def model_shape(model: torch.nn.Module) -> Dict[str, Any]:
    """The architecture fields that decide whether a checkpoint's weights fit."""
    cfg = model.config
    keys = ("model_type", "num_hidden_layers", "hidden_size", "num_attention_heads", "intermediate_size", "vocab_size")
    return {k: getattr(cfg, k, None) for k in keys}


__all__ = ["check_output_dir", "run_lock", "start_run", "prepare_output_dir", "open_run", "clean_leftovers", "truncate_metrics",
           "weights_fingerprint", "data_fingerprint", "model_shape", "MODEL_DIRS"]
