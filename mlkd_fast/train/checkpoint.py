"""Atomic checkpoints and resume state.

Layout of an output directory:
    checkpoint/state.pt   the resumable training state (latest), written atomically
    <model dir>/          the kept model (save_pretrained + tokenizer), replaced atomically
A write goes to a temporary file/dir in the same directory, is flushed, then
renamed over the old one, so a crash never leaves a half-written checkpoint.
"""
from __future__ import annotations

import json
import os
import random
import shutil
from typing import Any, Dict, Optional

import numpy as np
import torch

from mlkd_fast.errors import InputError, InputTypeError

STATE_DIR = "checkpoint"
STATE_FILE = "state.pt"
REQUIRED_KEYS = ("kind", "config", "state", "modules", "optimizer", "scheduler", "rng")


def state_path(output_dir: str) -> str:
    return os.path.join(output_dir, STATE_DIR, STATE_FILE)


def atomic_torch_save(obj: Any, path: str) -> None:
    os.makedirs(os.path.dirname(path) or ".", exist_ok=True)
    tmp = f"{path}.tmp.{os.getpid()}"
    with open(tmp, "wb") as f:
        torch.save(obj, f)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


def save_json(path: str, obj) -> None:
    """Write JSON to a temporary file, then rename it over `path` (never half-written)."""
    tmp = f"{path}.tmp.{os.getpid()}"
    with open(tmp, "w", encoding="utf-8") as f:
        json.dump(obj, f, indent=2)
    os.replace(tmp, path)


def save_state(output_dir: str, state: Dict[str, Any]) -> str:
    """Write the resume state atomically; returns its path."""
    missing = [k for k in REQUIRED_KEYS if k not in state]
    if missing:
        raise InputError(f"resume state lacks {missing}")
    path = state_path(output_dir)
    atomic_torch_save(state, path)
    return path


def load_state(output_dir: str, kind: str) -> Dict[str, Any]:
    """Read and check the resume state of a `kind` ('distill' or 'finetune') run."""
    path = state_path(output_dir)
    if not os.path.isfile(path):
        raise InputError(f"cannot resume: {output_dir!r} holds no checkpoint ({path} does not exist)")
    try:
        state = torch.load(path, map_location="cpu", weights_only=False)
    except Exception as e:
        raise InputError(f"cannot resume: checkpoint {path} is corrupt or unreadable ({type(e).__name__}: {e})") from e
    if not isinstance(state, dict) or any(k not in state for k in REQUIRED_KEYS):
        raise InputError(f"cannot resume: checkpoint {path} is incomplete (expected keys {list(REQUIRED_KEYS)})")
    if state["kind"] != kind:
        raise InputError(f"cannot resume: checkpoint {path} is from a {state['kind']!r} run, not {kind!r}")
    return state


def check_same_config(saved: Dict[str, Any], current: Dict[str, Any], path: str) -> None:
    """Resuming with other settings would not reproduce the uninterrupted run: refuse."""
    diff = sorted(k for k in set(saved) | set(current) if saved.get(k) != current.get(k))
    if diff:
        pairs = ", ".join(f"{k}: saved {saved.get(k)!r} vs now {current.get(k)!r}" for k in diff)
        raise InputError(f"cannot resume from {path}: the run's settings differ ({pairs})")


def rng_state() -> Dict[str, Any]:
    state = {"torch": torch.get_rng_state(), "numpy": np.random.get_state(), "python": random.getstate()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: Dict[str, Any]) -> None:
    torch.set_rng_state(state["torch"])
    np.random.set_state(state["numpy"])
    random.setstate(state["python"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def save_model_atomic(model, dest: str, tokenizer=None) -> str:
    """save_pretrained (+ tokenizer) into dest.tmp, then swap it in for dest."""
    tmp, old = dest + ".tmp", dest + ".old"
    for d in (tmp, old):
        if os.path.exists(d):
            shutil.rmtree(d)
    model.save_pretrained(tmp)
    if tokenizer is not None:
        tokenizer.save_pretrained(tmp)
    if os.path.exists(dest):
        os.replace(dest, old)
    os.replace(tmp, dest)
    if os.path.exists(old):
        shutil.rmtree(old)
    return dest


def prepare_output_dir(output_dir: str, *, resume: bool, overwrite: bool, kind: str) -> Optional[Dict[str, Any]]:
    """Check the output directory before any training: returns the resume state, or None for a fresh run.

    A fresh run into a non-empty directory needs overwrite=True (which then empties it).
    """
    if not isinstance(output_dir, (str, os.PathLike)) or not str(output_dir):
        raise InputTypeError(f"output_dir must be a directory path, got {output_dir!r}")
    output_dir = os.fspath(output_dir)
    if resume:
        return load_state(output_dir, kind)
    if os.path.exists(output_dir):
        if not os.path.isdir(output_dir):
            raise InputError(f"output_dir {output_dir!r} exists and is not a directory")
        if os.listdir(output_dir):
            if not overwrite:
                raise InputError(
                    f"output_dir {output_dir!r} already holds files; pass overwrite=True (--overwrite) to replace them "
                    "or resume=True (--resume) to continue the run"
                )
            shutil.rmtree(output_dir)
    os.makedirs(output_dir, exist_ok=True)
    return None


def open_run(output_dir: str, run_settings: Dict[str, Any], *, resume: bool, overwrite: bool, kind: str) -> Optional[Dict[str, Any]]:
    """Prepare output_dir for a `kind` run and record its settings.

    Returns the saved state when resuming (after checking it was made with the
    same settings), else None. Refuses to overwrite without overwrite=True.
    """
    saved = prepare_output_dir(output_dir, resume=resume, overwrite=overwrite, kind=kind)
    if saved is not None:
        check_same_config(saved["config"], run_settings, state_path(output_dir))
    save_json(os.path.join(output_dir, f"{kind}_config.json"), run_settings)
    return saved


__all__ = [
    "STATE_DIR",
    "STATE_FILE",
    "state_path",
    "atomic_torch_save",
    "save_state",
    "load_state",
    "check_same_config",
    "rng_state",
    "set_rng_state",
    "seed_everything",
    "save_model_atomic",
    "prepare_output_dir",
    "open_run",
    "save_json",
]
