"""GLUE data: task specs, readers (GLUE-format TSV directories or the `datasets` library),
tokenisation, seeded batch order and dynamic-padding collation.

Every loader returns a `datasets.Dataset` with the raw columns `sentence1`,
optional `sentence2` and `labels` (int class id, float score for STS-B);
`tokenize_dataset` turns it into `input_ids`, `attention_mask`,
`token_type_ids`, `labels`. Malformed files fail with the file and line named.
"""
from __future__ import annotations

import csv
import os
from dataclasses import dataclass
from typing import Dict, Iterator, List, Optional, Sequence, Tuple

import numpy as np
import torch


@dataclass(frozen=True)
class TaskSpec:
    name: str  # canonical lower-case name
    folder: str  # GLUE directory name
    labels: Optional[Tuple[str, ...]]  # label strings in class-id order; None = regression
    text_columns: Tuple[str, ...]  # header names of the text columns in the GLUE TSV
    label_column: str  # header name of the label column in the GLUE TSV
    hub_text_columns: Tuple[str, ...]  # column names in the `datasets` hub version
    metric: str  # the task's main metric (model selection, METHOD.md's table)
    dev_split: str = "dev"
    header: bool = True  # CoLA's train/dev files have no header (as released by GLUE)
    positional: Optional[Tuple[int, ...]] = None  # for header-less files: text columns..., label column

    @property
    def num_labels(self) -> int:
        return 1 if self.labels is None else len(self.labels)

    @property
    def is_regression(self) -> bool:
        return self.labels is None


TASKS: Dict[str, TaskSpec] = {
    t.name: t
    for t in (
        TaskSpec("cola", "CoLA", ("0", "1"), ("sentence",), "label", ("sentence",), "mcc", header=False, positional=(3, 1)),
        TaskSpec("sst-2", "SST-2", ("0", "1"), ("sentence",), "label", ("sentence",), "accuracy"),
        TaskSpec("mrpc", "MRPC", ("0", "1"), ("#1 String", "#2 String"), "Quality", ("sentence1", "sentence2"), "f1"),
        TaskSpec("qqp", "QQP", ("0", "1"), ("question1", "question2"), "is_duplicate", ("question1", "question2"), "f1"),
        TaskSpec("sts-b", "STS-B", None, ("sentence1", "sentence2"), "score", ("sentence1", "sentence2"), "spearman"),
        TaskSpec(
            "mnli",
            "MNLI",
            ("contradiction", "entailment", "neutral"),
            ("sentence1", "sentence2"),
            "gold_label",
            ("premise", "hypothesis"),
            "accuracy",
            dev_split="dev_matched",
        ),
        TaskSpec("qnli", "QNLI", ("entailment", "not_entailment"), ("question", "sentence"), "label", ("question", "sentence"), "accuracy"),
        TaskSpec("rte", "RTE", ("entailment", "not_entailment"), ("sentence1", "sentence2"), "label", ("sentence1", "sentence2"), "accuracy"),
        TaskSpec("wnli", "WNLI", ("0", "1"), ("sentence1", "sentence2"), "label", ("sentence1", "sentence2"), "accuracy"),
    )
}
_ALIASES = {"sst2": "sst-2", "stsb": "sts-b", "sts": "sts-b", "mnli-m": "mnli", "mnli_matched": "mnli"}
# The hub's GLUE uses integer labels in this order; MNLI's hub order differs from the TSV strings' sorted order.
_HUB_LABEL_ORDER = {"mnli": ("entailment", "neutral", "contradiction"), "qnli": ("entailment", "not_entailment"), "rte": ("entailment", "not_entailment")}


def get_task(name: str) -> TaskSpec:
    if not isinstance(name, str):
        raise TypeError(f"task must be a task name (str), got {type(name).__name__}")
    key = name.strip().lower()
    key = _ALIASES.get(key, key)
    if key not in TASKS:
        raise ValueError(f"unknown task {name!r}; known GLUE tasks: {sorted(TASKS)}")
    return TASKS[key]


# ----------------------------------------------------------------------------- GLUE TSV


def _split_file(task: TaskSpec, data_dir: str, split: str) -> str:
    if split == "dev":
        split = task.dev_split
    folder = os.path.join(data_dir, task.folder)
    if not os.path.isdir(folder):
        # accept a directory that is already the task folder
        if os.path.isfile(os.path.join(data_dir, f"{split}.tsv")):
            folder = data_dir
        else:
            raise ValueError(f"GLUE directory {data_dir!r} has no {task.folder}/ folder for task {task.name!r}")
    path = os.path.join(folder, f"{split}.tsv")
    if not os.path.isfile(path):
        raise ValueError(f"data file {path!r} does not exist (task {task.name!r}, split {split!r})")
    return path


def read_glue_tsv(task: TaskSpec, path: str) -> Dict[str, list]:
    """Parse one labelled GLUE TSV file into columns sentence1[, sentence2], labels.

    Quotes are data in GLUE files (QUOTE_NONE); the MRPC header starts with a BOM (utf-8-sig).
    """
    rows: List[List[str]] = []
    with open(path, encoding="utf-8-sig", newline="") as f:
        try:
            rows = list(csv.reader(f, delimiter="\t", quoting=csv.QUOTE_NONE))
        except (csv.Error, UnicodeDecodeError) as e:
            raise ValueError(f"{path}: cannot be read as a tab-separated UTF-8 file: {e}") from e
    if not rows:
        raise ValueError(f"{path}: file is empty")
    if task.header:
        header = rows[0]
        missing = [c for c in task.text_columns + (task.label_column,) if c not in header]
        if missing:
            raise ValueError(
                f"{path}, line 1: header {header} lacks column(s) {missing} expected for task {task.name!r} "
                "(is this a labelled train/dev file of that task?)"
            )
        text_idx = [header.index(c) for c in task.text_columns]
        label_idx = header.index(task.label_column)
        width, start = len(header), 1
    else:
        *text_idx, label_idx = task.positional
        width, start = len(rows[0]), 0
    need = max(text_idx + [label_idx]) + 1
    columns: Dict[str, list] = {"sentence1": []}
    if len(text_idx) == 2:
        columns["sentence2"] = []
    labels: list = []
    for lineno, row in enumerate(rows[start:], start=start + 1):
        if not row or (len(row) == 1 and not row[0].strip()):
            continue  # blank line
        if len(row) < need or (task.header and len(row) != width):
            raise ValueError(
                f"{path}, line {lineno}: expected {width} tab-separated fields, got {len(row)}: {' | '.join(row)[:200]!r}"
            )
        raw = row[label_idx].strip()
        if task.is_regression:
            try:
                value = float(raw)
            except ValueError:
                raise ValueError(f"{path}, line {lineno}: label {raw!r} is not a number") from None
        else:
            if raw not in task.labels:
                raise ValueError(f"{path}, line {lineno}: label {raw!r} is not one of {list(task.labels)} (task {task.name!r})")
            value = task.labels.index(raw)
        columns["sentence1"].append(row[text_idx[0]])
        if len(text_idx) == 2:
            columns["sentence2"].append(row[text_idx[1]])
        labels.append(value)
    if not labels:
        raise ValueError(f"{path}: no data rows")
    columns["labels"] = labels
    return columns


def load_glue_split(task: str, data_dir: str, split: str):
    """A split ('train' or 'dev'; MNLI also 'dev_mismatched') of a GLUE-format directory as a Dataset."""
    import datasets

    spec = get_task(task)
    if not isinstance(data_dir, (str, os.PathLike)) or not os.path.isdir(data_dir):
        raise ValueError(f"data_dir must be an existing GLUE directory, got {data_dir!r}")
    path = _split_file(spec, os.fspath(data_dir), split)
    return datasets.Dataset.from_dict(read_glue_tsv(spec, path))


# ----------------------------------------------------------------------------- datasets library


def load_datasets_split(task: str, source: str, split: str):
    """A split from the `datasets` library: a local .csv/.tsv/.json/.jsonl/.parquet file, or a hub name
    (e.g. "glue" or "nyu-mll/glue", needs network). Columns are renamed to sentence1/sentence2/labels."""
    import datasets

    spec = get_task(task)
    ext = os.path.splitext(source)[1].lower()
    if os.path.exists(source):
        if not os.path.isfile(source):
            raise ValueError(f"data file {source!r} is not a file")
        builder = {".csv": "csv", ".tsv": "csv", ".json": "json", ".jsonl": "json", ".parquet": "parquet"}.get(ext)
        if builder is None:
            raise ValueError(f"data file {source!r}: expected a .csv, .tsv, .json, .jsonl or .parquet file")
        kwargs = {"delimiter": "\t"} if ext == ".tsv" else {}
        try:
            ds = datasets.load_dataset(builder, data_files={"data": source}, split="data", **kwargs)
        except Exception as e:
            raise ValueError(f"data file {source!r} could not be read by datasets ({builder}): {e}") from e
    else:
        hub_split = {"dev": "validation_matched" if spec.name == "mnli" else "validation"}.get(split, split)
        config = spec.name.replace("-", "")
        try:
            ds = datasets.load_dataset(source, config, split=hub_split)
        except Exception as e:  # offline, unknown name, unknown config: say which source failed
            raise ValueError(
                f"{source!r} is neither a local file nor a loadable datasets hub dataset "
                f"(config {config!r}, split {hub_split!r}; hub names need network): {type(e).__name__}: {e}"
            ) from e
    return normalize_columns(spec, ds, source)


def normalize_columns(spec: TaskSpec, ds, source: str = "dataset"):
    """Rename a dataset's text/label columns (hub or GLUE names) to sentence1[, sentence2], labels."""
    cols = set(ds.column_names)
    if {"input_ids", "attention_mask", "labels"} <= cols:
        return ds  # already tokenised
    candidates = [spec.hub_text_columns, spec.text_columns, ("sentence1", "sentence2")[: len(spec.text_columns)]]
    text = next((c for c in candidates if set(c) <= cols), None)
    if text is None:
        raise ValueError(f"{source}: columns {sorted(cols)} lack the text column(s) {list(spec.hub_text_columns)} of task {spec.name!r}")
    label = next((c for c in ("labels", "label", spec.label_column) if c in cols), None)
    if label is None:
        raise ValueError(f"{source}: columns {sorted(cols)} have no 'label' or 'labels' column")
    rename = {src: dst for src, dst in zip(text, ("sentence1", "sentence2")) if src != dst}
    if label != "labels":
        rename[label] = "labels"
    ds = ds.rename_columns(rename) if rename else ds
    keep = ["sentence1", "sentence2"][: len(text)] + ["labels"]
    ds = ds.remove_columns([c for c in ds.column_names if c not in keep])
    if spec.is_regression:
        return ds
    # string labels (e.g. from a TSV read by datasets) -> class ids
    first = ds[0]["labels"]
    if isinstance(first, str):
        def to_id(batch):
            out = []
            for v in batch["labels"]:
                if v not in spec.labels:
                    raise ValueError(f"{source}: label {v!r} is not one of {list(spec.labels)} (task {spec.name!r})")
                out.append(spec.labels.index(v))
            return {"labels": out}

        ds = ds.map(to_id, batched=True)
    elif spec.name in _HUB_LABEL_ORDER and not os.path.exists(source):
        order = _HUB_LABEL_ORDER[spec.name]
        ds = ds.map(lambda b: {"labels": [spec.labels.index(order[v]) for v in b["labels"]]}, batched=True)
    return ds


def load_split(task: str, split: str, *, data_dir: Optional[str] = None, source: Optional[str] = None):
    """One split from a GLUE directory (data_dir) or from the datasets library (source: file or hub name)."""
    if (data_dir is None) == (source is None):
        raise ValueError("give exactly one of data_dir (a GLUE-format directory) or source (a data file or hub dataset name)")
    if data_dir is not None:
        return load_glue_split(task, data_dir, split)
    return load_datasets_split(task, source, split)


# ----------------------------------------------------------------------------- tokenisation

TOKENIZED = ("input_ids", "attention_mask")


def is_tokenized(ds) -> bool:
    return set(TOKENIZED) <= set(ds.column_names)


def tokenize_dataset(ds, tokenizer, max_seq_length: int, name: str = "dataset"):
    """Raw sentence1[, sentence2], labels -> input_ids, attention_mask, token_type_ids, labels (unpadded)."""
    cols = set(ds.column_names)
    if "sentence1" not in cols:
        raise ValueError(f"{name} has neither tokenised columns {list(TOKENIZED)} nor raw text column 'sentence1' (columns: {sorted(cols)})")
    if tokenizer is None:
        raise ValueError(f"{name} holds raw text: pass tokenizer= to tokenise it (or give tokenised input_ids/attention_mask)")
    pair = "sentence2" in cols

    def enc(batch):
        args = (batch["sentence1"], batch["sentence2"]) if pair else (batch["sentence1"],)
        out = tokenizer(*args, truncation=True, max_length=max_seq_length)
        return {k: out[k] for k in ("input_ids", "attention_mask", "token_type_ids") if k in out}

    drop = [c for c in ds.column_names if c != "labels"]
    return ds.map(enc, batched=True, remove_columns=drop)


def prepare_dataset(ds, *, name: str, tokenizer, max_seq_length: int, num_labels: int):
    """Check a Dataset (raw or tokenised), tokenise raw text, and validate the labels against the model."""
    import datasets

    if not isinstance(ds, datasets.Dataset):
        raise TypeError(f"{name} must be a datasets.Dataset, got {type(ds).__name__}")
    if len(ds) == 0:
        raise ValueError(f"{name} is empty")
    if "labels" not in ds.column_names:
        raise ValueError(f"{name} has no 'labels' column (columns: {ds.column_names})")
    if not is_tokenized(ds):
        ds = tokenize_dataset(ds, tokenizer, max_seq_length, name)
    labels = np.asarray(ds["labels"])
    if num_labels == 1:
        if not np.issubdtype(labels.dtype, np.number):
            raise ValueError(f"{name}: regression labels must be numbers, got dtype {labels.dtype}")
    else:
        if not np.issubdtype(labels.dtype, np.integer):
            raise ValueError(f"{name}: classification labels must be integer class ids, got dtype {labels.dtype}")
        bad = labels[(labels < 0) | (labels >= num_labels)]
        if bad.size:
            raise ValueError(f"{name}: label {int(bad[0])} is outside 0..{num_labels - 1} (the model has {num_labels} labels)")
    return ds.with_format(None)


def prepare_splits(train_data, eval_data, cfg, *, tokenizer, num_labels: int):
    """Tokenised (train, dev) for a run: train subsampled to cfg.max_train_samples; dev None without eval_data."""
    if hasattr(train_data, "select"):
        train_data = subset(train_data, cfg.max_train_samples, cfg.seed)
    common = dict(tokenizer=tokenizer, max_seq_length=cfg.max_seq_length, num_labels=num_labels)
    train = prepare_dataset(train_data, name="train_data", **common)
    dev = None if eval_data is None else prepare_dataset(eval_data, name="eval_data", **common)
    return train, dev


def subset(ds, n: Optional[int], seed: int):
    """A seeded random subset of n rows (all rows when n is None or >= len)."""
    if n is None or n >= len(ds):
        return ds
    idx = np.random.default_rng(seed).permutation(len(ds))[:n]
    return ds.select(sorted(idx.tolist()))


# ----------------------------------------------------------------------------- batching


def epoch_order(n: int, seed: int, epoch_key: int) -> np.ndarray:
    """The shuffled row order of one epoch: a pure function of (seed, epoch_key), so resume replays it."""
    return np.random.default_rng([seed, epoch_key]).permutation(n)


class Collator:
    """Dynamic padding: pad each batch to its longest sequence."""

    def __init__(self, pad_token_id: int = 0, regression: bool = False):
        self.pad_token_id = int(pad_token_id)
        self.regression = regression

    def __call__(self, rows: Sequence[dict]) -> Dict[str, torch.Tensor]:
        length = max(len(r["input_ids"]) for r in rows)
        batch = {}
        pads = {"input_ids": self.pad_token_id, "attention_mask": 0, "token_type_ids": 0}
        for key, pad in pads.items():
            if key not in rows[0]:
                continue
            out = torch.full((len(rows), length), pad, dtype=torch.long)
            for i, r in enumerate(rows):
                seq = r[key]
                out[i, : len(seq)] = torch.as_tensor(seq, dtype=torch.long)
            batch[key] = out
        dtype = torch.float32 if self.regression else torch.long
        batch["labels"] = torch.tensor([r["labels"] for r in rows], dtype=dtype)
        return batch


def batches(ds, order: Sequence[int], batch_size: int, collate: Collator, start: int = 0) -> Iterator[Dict[str, torch.Tensor]]:
    """Yield collated batches of `ds` in `order`, skipping the first `start` batches (resume)."""
    cols = [c for c in ("input_ids", "attention_mask", "token_type_ids", "labels") if c in ds.column_names]
    for b in range(start, (len(order) + batch_size - 1) // batch_size):
        idx = [int(i) for i in order[b * batch_size : (b + 1) * batch_size]]
        chunk = ds[idx]
        rows = [{c: chunk[c][i] for c in cols} for i in range(len(idx))]
        yield collate(rows)


def num_batches(n: int, batch_size: int) -> int:
    return (n + batch_size - 1) // batch_size


__all__ = [
    "TASKS",
    "TaskSpec",
    "get_task",
    "read_glue_tsv",
    "load_glue_split",
    "load_datasets_split",
    "load_split",
    "tokenize_dataset",
    "prepare_dataset",
    "subset",
    "epoch_order",
    "Collator",
    "batches",
    "num_batches",
]
