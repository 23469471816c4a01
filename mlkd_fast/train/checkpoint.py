"""The resume state of a run: written whole or not at all, verified when read, the previous one kept.

    <output_dir>/checkpoint/state.pt        the newest resumable state
    <output_dir>/checkpoint/state.prev.pt   the one before it (fallback)

File format: one header line `MLKD-CHECKPOINT 1 sha256=<hex> bytes=<n>`,
then the torch.save payload. A new state is written to a temporary file,
read back and verified, and only then rotated in (newest -> prev, new ->
newest). Loading verifies the checksum, the keys and that every weight is
finite; a bad newest state falls back to the previous one, saying so.
"""
from __future__ import annotations

import hashlib
import io
import os
import random
import sys
from typing import Any, Dict, List

import numpy as np
import torch

from mlkd_fast.errors import InputError
from mlkd_fast.train.atomic import fault_point, fsync_dir, write_temp

STATE_DIR = "checkpoint"
STATE_FILE = "state.pt"
PREV_FILE = "state.prev.pt"
MAGIC = b"MLKD-CHECKPOINT 1"
REQUIRED_KEYS = ("kind", "config", "state", "modules", "optimizer", "scheduler", "rng")


def state_path(output_dir: str) -> str:
    return os.path.join(output_dir, STATE_DIR, STATE_FILE)


def _encode(state: Dict[str, Any]) -> bytes:
    buf = io.BytesIO()
    torch.save(state, buf)
    payload = buf.getvalue()
    header = MAGIC + f" sha256={hashlib.sha256(payload).hexdigest()} bytes={len(payload)}\n".encode()
    return header + payload


def _decode(data: bytes, path: str) -> Dict[str, Any]:
    """The state in a checkpoint file's bytes, or InputError saying what is wrong with them."""
    head, _, payload = data.partition(b"\n")
    fields = dict(f.split("=", 1) for f in head[len(MAGIC):].decode("ascii", "replace").split() if "=" in f)
    if not head.startswith(MAGIC) or "sha256" not in fields:
        raise InputError(f"{path} is not an mlkd_fast checkpoint (no checksummed header)")
    if str(len(payload)) != fields.get("bytes") or hashlib.sha256(payload).hexdigest() != fields["sha256"]:
        raise InputError(f"{path} is corrupt: its checksum does not match its contents (truncated or overwritten)")
    try:
        state = torch.load(io.BytesIO(payload), map_location="cpu", weights_only=False)
    except Exception as e:  # a payload that passed the checksum but does not load: a bug, reported as such
        raise InputError(f"{path} is unreadable ({type(e).__name__}: {e})") from e
    if not isinstance(state, dict) or any(k not in state for k in REQUIRED_KEYS):
        raise InputError(f"{path} is incomplete (expected keys {list(REQUIRED_KEYS)})")
    for module, weights in state["modules"].items():
        for name, t in weights.items():
            if torch.is_tensor(t) and t.is_floating_point() and not bool(torch.isfinite(t).all()):
                raise InputError(f"{path} holds non-finite weights ({module}: {name}): a diverged run")
    return state


def save_state(output_dir: str, state: Dict[str, Any]) -> str:
    """Write the resume state; the previous one stays until the new one is on disk and verified."""
    missing = [k for k in REQUIRED_KEYS if k not in state]
    if missing:
        raise InputError(f"resume state lacks {missing}")
    folder = os.path.join(output_dir, STATE_DIR)
    path, prev = state_path(output_dir), os.path.join(folder, PREV_FILE)
    data = _encode(state)
    tmp = write_temp(path, data)
    fault_point("state:written-tmp")
    with open(tmp, "rb") as f:  # read back what the disk holds
        if f.read() != data:
            raise OSError(f"checkpoint {tmp} did not read back as written")
    fault_point("state:verified")
    if os.path.exists(path):
        os.replace(path, prev)
        fault_point("state:rotated")
    os.replace(tmp, path)
    fsync_dir(folder)
    return path


def load_state(output_dir: str, kind: str) -> Dict[str, Any]:
    """The newest good resume state of a `kind` run ('distill' or 'finetune'), falling back to the previous one."""
    folder = os.path.join(output_dir, STATE_DIR)
    candidates = [p for p in (state_path(output_dir), os.path.join(folder, PREV_FILE)) if os.path.isfile(p)]
    if not candidates:
        raise InputError(f"cannot resume: {output_dir!r} holds no checkpoint ({state_path(output_dir)} does not exist)")
    problems: List[str] = []
    for path in candidates:
        try:
            with open(path, "rb") as f:
                state = _decode(f.read(), path)
        except InputError as e:
            problems.append(str(e))
            continue
        if state["kind"] != kind:
            raise InputError(f"cannot resume: checkpoint {path} is from a {state['kind']!r} run, not {kind!r}")
        if problems:
            print(f"mlkd_fast: {problems[0]}; resuming from the previous checkpoint {path} "
                  f"(global step {state['state']['global_step']})", file=sys.stderr)
        return state
    raise InputError("cannot resume: " + "; ".join(problems))


# Settings added after checkpoints were first written, with the value that an older checkpoint (which lacks the
# key) ran with: such a run resumes when the current value is that one.
LATER_SETTINGS: Dict[str, Any] = {
    "eval_every": 0, "drop_last": False, "objective": "mlkd", "recipe": "mlkd_fast",
    "minilm_layer": None, "terms": {}, "teacher_mode": "eval",
    "mha_feature": "output", "optimizer": "adamw", "projection_init": "identity", "max_steps": 0,
    "teacher_cache": None, "teacher_cache_dtype": "fp32", "teacher_cache_max_gb": None, "report_to": "none",
}


def _retired_settings() -> Dict[str, Any]:
    """Settings that earlier checkpoints hold and the current ones no longer do (config.RENAMED_FIELDS: they moved
    into DistillConfig.terms), with their defaults, read from the terms: a checkpoint that ran with the default
    resumes (the same run as terms={} now)."""
    from mlkd_fast.train.config import RENAMED_FIELDS
    from mlkd_fast.train.objectives import TERMS

    return {old: getattr(TERMS[term].settings(), setting) for old, (term, setting) in RENAMED_FIELDS.items()}


def check_same_config(saved: Dict[str, Any], current: Dict[str, Any], path: str) -> None:
    """Resuming with other settings (or another teacher, student shape or data) would not continue the run: refuse."""
    retired = _retired_settings()
    saved = {k: v for k, v in saved.items() if not (k in retired and retired[k] == v)}
    saved = {**{k: v for k, v in LATER_SETTINGS.items() if k in current}, **saved}
    diff = sorted(k for k in set(saved) | set(current) if saved.get(k) != current.get(k))
    if diff:
        pairs = ", ".join(f"{k}: saved {saved.get(k)!r} vs now {current.get(k)!r}" for k in diff)
        raise InputError(f"cannot resume from {path}: this is not the same run ({pairs})")


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


__all__ = ["STATE_DIR", "STATE_FILE", "PREV_FILE", "state_path", "save_state", "load_state", "check_same_config",
           "rng_state", "set_rng_state", "seed_everything"]
