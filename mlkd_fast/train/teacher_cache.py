"""Teacher-output cache: a frozen teacher in eval mode gives each example the same features every time, so
the features the enabled loss terms read are computed once, stored, and read back by later epochs, stages,
seeds and objectives instead of running the teacher.

One cache is a folder under the cache root named `<source>-<features>`: the fingerprint of what the
features depend on (teacher weights, training data's token ids, storage dtype, format version), then that of
the feature set. A run opens any complete folder of its source whose features include the ones it needs, so
an objective that reads fewer features (kd: logits) reuses the cache another objective (mlkd) built:
    manifest.json   what the features depend on, and per file its shape, dtype and sha256
    offsets.npy     int64 (N + 1,): example i's tokens are rows offsets[i]:offsets[i + 1] of a token file
    <name>.npy      token features (T, D), trimmed to each example's real tokens; or row features (N, C)
It is built in a temporary folder and renamed into place whole (a cache folder that exists is complete);
every file is checked against its sha256 when a cache is opened; a folder of the library's own naming whose
manifest or files are damaged is removed and built again (the log line names the file).
Each loss term names the features it reads (objectives.Term.cached); names: tok (L_EMB input), hid<m> (H_m), mha<m> (O_m), q<m>/k<m>/v<m>, cls, logits, start/end (QA).
"""
from __future__ import annotations

import hashlib
import json
import os
import shutil
from typing import Dict, Iterable, List, Optional, Sequence

import numpy as np
import torch

from mlkd_fast.data.batching import Collator, batches
from mlkd_fast.errors import InputError
from mlkd_fast.train.atomic import fsync_dir, save_json
from mlkd_fast.train.capture import capture_features
from mlkd_fast.train.features import Features

VERSION = 1
DTYPES = {"fp32": np.float32, "fp16": np.float16}
ROW_FEATURES = ("cls", "logits")


def _extract(f: Features, name: str) -> torch.Tensor:
    """Feature `name` of a batch: (B, L, D) per token or (B, C) per row."""
    if name == "tok":
        return f.token_embeddings
    if name == "cls":
        return f.cls
    if name in ("logits", "start", "end"):
        x = {"logits": f.logits, "start": f.start_logits, "end": f.end_logits}[name]
        return x if name == "logits" else x[..., None]
    kind, m = name[:3] if name[:3] in ("hid", "mha") else name[0], int(name.lstrip("hidmaqkv"))
    if kind == "hid":
        return f.hidden[m]
    if kind == "mha":
        return f.mha[m - 1]
    return f.qkv[m - 1]["qkv".index(kind)]


class TeacherCache:
    """An opened (checked) cache: `features(index, length, device)` rebuilds a batch's teacher Features from
    the files of `names` (the folder may hold more)."""

    def __init__(self, folder: str, teacher_layers: int, heads: int, names: Sequence[str], verify: bool = True):
        self.folder = folder
        self.manifest = read_manifest(os.path.join(folder, "manifest.json"))
        for name in ["offsets.npy"] + [n + ".npy" for n in names] if verify else ():  # the files read
            if _sha256(os.path.join(folder, name)) != self.manifest["files"][name]["sha256"]:
                raise InputError(f"teacher cache file {os.path.join(folder, name)} does not match its checksum "
                                 "(damaged or changed on disk): delete the folder to rebuild it")
        self.offsets = np.load(os.path.join(folder, "offsets.npy"))
        self.arrays = {n: np.load(os.path.join(folder, n + ".npy"), mmap_mode="r") for n in names}
        self.layers, self.heads = teacher_layers, heads

    @property
    def bytes(self) -> int:
        return sum(meta["bytes"] for meta in self.manifest["files"].values())

    def features(self, index: torch.Tensor, length: int, device) -> Features:
        rows = index.tolist()
        got = {n: self._gather(n, a, rows, length) for n, a in self.arrays.items()}
        to = {n: torch.from_numpy(v).to(device=device, dtype=torch.float32) for n, v in got.items()}
        f = Features(mha=[to.get(f"mha{m}") for m in range(1, self.layers + 1)],
                     hidden=[to.get(f"hid{m}") for m in range(self.layers + 1)],
                     qkv=[tuple(to.get(f"{x}{m}") for x in "qkv") for m in range(1, self.layers + 1)],
                     token_embeddings=to.get("tok"), logits=to.get("logits"), heads=self.heads)
        f.start_logits = to["start"][..., 0] if "start" in to else None
        f.end_logits = to["end"][..., 0] if "end" in to else None
        f.cls_state = to.get("cls")
        return f

    def _gather(self, name: str, array, rows: List[int], length: int) -> np.ndarray:
        if name in ROW_FEATURES:
            return np.ascontiguousarray(array[rows])
        out = np.zeros((len(rows), length, array.shape[1]), dtype=array.dtype)
        for i, r in enumerate(rows):
            a, b = self.offsets[r], self.offsets[r + 1]
            out[i, : b - a] = array[a:b]
        return out


def estimated_bytes(teacher, train, names: Iterable[str], dtype: str = "fp32") -> int:
    """The size a cache of `names` on `train` will have: token features x real tokens, row features x rows."""
    tokens = sum(len(x) for x in train["input_ids"])
    width, item = teacher.config.hidden_size, np.dtype(DTYPES[dtype]).itemsize
    labels = max(1, int(getattr(teacher.config, "num_labels", 1)))
    per_token = sum(1 if n in ("start", "end") else width for n in names if n not in ROW_FEATURES)
    per_row = sum(width if n == "cls" else labels for n in names if n in ROW_FEATURES)
    return (tokens * per_token + len(train) * per_row) * item + 8 * (len(train) + 1)


def open_or_build(root: str, teacher, train, names: Iterable[str], *, depends_on: Dict, batch_size: int,
                  collate: Collator, device, dtype: str = "fp32", max_gb: Optional[float] = None,
                  log=print) -> TeacherCache:
    """The cache of `teacher` on `train` for `names`, built first when no complete one exists under root
    (refused when it would exceed max_gb)."""
    names = sorted(set(names))
    source = dict(depends_on, dtype=dtype, version=VERSION)
    key = dict(source, names=names)
    prefix = _digest(source)
    layers, heads = teacher.config.num_hidden_layers, teacher.config.num_attention_heads
    placed = False  # True when this call wrote the folder (its files were hashed as they were written)
    folder = _covering(root, prefix, names, log)
    if folder is not None:
        try:
            cache = TeacherCache(folder, layers, heads, names)
        except InputError as e:  # the library's own folder, damaged (a file changed or cut short): rebuilt
            log(f"mlkd_fast: {e}; rebuilding it")
            shutil.rmtree(folder, ignore_errors=True)
            folder = None
        else:
            log(f"mlkd_fast: teacher cache {folder}: {cache.bytes / 2**20:.1f} MiB")
            return cache
    if folder is None:
        folder = os.path.join(root, f"{prefix}-{_digest(names)[:8]}")
        size = estimated_bytes(teacher, train, names, dtype)
        if max_gb is not None and size > max_gb * 2**30:
            raise InputError(f"the teacher cache would take {size / 2**30:.2f} GiB, over teacher_cache_max_gb={max_gb}: "
                             "raise the budget, store fp16 (teacher_cache_dtype), or run without the cache")
        log(f"mlkd_fast: building the teacher cache {folder} ({len(train)} examples, {size / 2**20:.1f} MiB, "
            f"features {names})")
        placed = _build(folder, teacher, train, names, key, batch_size, collate, device, DTYPES[dtype])
    cache = TeacherCache(folder, layers, heads, names, verify=not placed)
    log(f"mlkd_fast: teacher cache {folder}: {cache.bytes / 2**20:.1f} MiB")
    return cache


def _digest(value) -> str:
    return hashlib.sha256(json.dumps(value, sort_keys=True).encode()).hexdigest()[:16]


def read_manifest(path: str) -> Dict:
    """A cache folder's manifest.json, checked: a damaged one is an error naming it (and what to do)."""
    try:
        with open(path) as f:
            manifest = json.load(f)
        if not isinstance(manifest, dict):
            raise ValueError("not a JSON object")
        missing = [k for k in ("names", "files") if k not in manifest]
        if missing:
            raise ValueError(f"no {missing}")
        return manifest
    except (OSError, ValueError) as e:
        raise InputError(f"teacher cache manifest {path} is damaged ({type(e).__name__}: {e}): delete its folder "
                         f"{os.path.dirname(path)} to rebuild it") from None


def _covering(root: str, prefix: str, names: List[str], log=print) -> Optional[str]:
    """A complete cache folder of this source holding every one of `names` (the smallest such), or None. A folder
    of this source (named by the library) whose manifest is damaged is removed, to be rebuilt."""
    found = []
    for entry in sorted(os.listdir(root)) if os.path.isdir(root) else ():
        manifest = os.path.join(root, entry, "manifest.json")
        if entry.startswith(prefix + "-") and ".tmp." not in entry and os.path.exists(manifest):
            try:
                held = read_manifest(manifest)["names"]
            except InputError as e:
                log(f"mlkd_fast: {e}; removing it")
                shutil.rmtree(os.path.join(root, entry), ignore_errors=True)
                continue
            if set(names) <= set(held):
                found.append((len(held), os.path.join(root, entry)))
    return min(found)[1] if found else None


def _build(folder, teacher, train, names, key, batch_size, collate, device, np_dtype) -> bool:
    """Writes the cache; True when this call's folder was renamed into place (False: another process won)."""
    lengths = np.fromiter((len(x) for x in train["input_ids"]), dtype=np.int64, count=len(train))
    offsets = np.concatenate([[0], np.cumsum(lengths)])
    tmp = f"{folder}.tmp.{os.getpid()}"
    shutil.rmtree(tmp, ignore_errors=True)
    os.makedirs(tmp)
    np.save(os.path.join(tmp, "offsets.npy"), offsets)
    parts = dict(token_embeddings="tok" in names, mha=any(n.startswith("mha") for n in names),
                 qkv=any(n[0] in "qkv" and n[1:].isdigit() for n in names))
    arrays: Dict[str, np.ndarray] = {}
    was_training = teacher.training
    teacher.eval()
    row = 0
    with torch.no_grad():
        for batch in batches(train, np.arange(len(train)), batch_size, collate):
            f = capture_features(teacher, {k: v.to(device) for k, v in batch.items()}, **parts)
            n = batch["input_ids"].shape[0]
            for name in names:
                x = _extract(f, name).float().cpu().numpy()
                if name not in arrays:
                    shape = (len(train),) + x.shape[1:] if name in ROW_FEATURES else (int(offsets[-1]), x.shape[-1])
                    arrays[name] = np.lib.format.open_memmap(os.path.join(tmp, name + ".npy"), mode="w+",
                                                             dtype=np_dtype, shape=shape)
                if name in ROW_FEATURES:
                    arrays[name][row:row + n] = x
                else:
                    for i in range(n):
                        a, b = offsets[row + i], offsets[row + i + 1]
                        arrays[name][a:b] = x[i, : b - a]
            row += n
    teacher.train(was_training)
    for a in arrays.values():
        a.flush()
    files = {}
    for name in ["offsets"] + names:
        path = os.path.join(tmp, name + ".npy")
        files[name + ".npy"] = {"sha256": _sha256(path), "bytes": os.path.getsize(path)}
    save_json(os.path.join(tmp, "manifest.json"), dict(key, files=files))
    fsync_dir(tmp)
    try:
        os.replace(tmp, folder)  # whole or not at all
    except OSError:
        if not os.path.exists(os.path.join(folder, "manifest.json")):
            raise
        shutil.rmtree(tmp, ignore_errors=True)  # another process finished the same cache first
        return False
    fsync_dir(os.path.dirname(folder) or ".")
    return True


def _sha256(path: str) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 22), b""):
            h.update(chunk)
    return h.hexdigest()


__all__ = ["TeacherCache", "open_or_build", "estimated_bytes", "VERSION", "DTYPES"]
