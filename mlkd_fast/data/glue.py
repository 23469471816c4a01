"""Readers of task data: GLUE-format TSV directories or the `datasets` library (files or hub names).

Every loader returns a `datasets.Dataset` with the raw columns `sentence1`,
optional `sentence2` and `labels` (int class id, float score for STS-B).
Malformed files fail with the file and line named.
"""
from __future__ import annotations

import math
import os
from typing import Dict, List, Optional

from mlkd_fast.data.tasks import HUB_LABEL_ORDER, TaskSpec, get_task
from mlkd_fast.errors import InputError


def _split_file(task: TaskSpec, data_dir: str, split: str) -> str:
    if split == "dev":
        split = task.dev_split
    folder = os.path.join(data_dir, task.folder)
    if not os.path.isdir(folder):
        # accept a directory that is already the task folder
        if os.path.isfile(os.path.join(data_dir, f"{split}.tsv")):
            folder = data_dir
        else:
            raise InputError(f"GLUE directory {data_dir!r} has no {task.folder}/ folder for task {task.name!r}")
    path = os.path.join(folder, f"{split}.tsv")
    if not os.path.isfile(path):
        raise InputError(f"data file {path!r} does not exist (task {task.name!r}, split {split!r})")
    return path


def read_tsv_rows(path: str) -> List[List[str]]:
    """Every line of a TSV file as its fields. Quotes are data (QUOTE_NONE: TSV, unlike CSV, has no quoting);
    UTF-8 with or without a BOM (the MRPC header starts with one); LF or CRLF line ends."""
    with open(path, encoding="utf-8-sig", newline="") as f:
        try:
            rows = [line.rstrip("\r\n").split("\t") if line.strip("\r\n") else [] for line in f]
        except UnicodeDecodeError as e:
            raise InputError(f"{path}: cannot be read as a tab-separated UTF-8 file: {e}") from e
    if not rows:
        raise InputError(f"{path}: file is empty")
    return rows


def read_glue_tsv(task: TaskSpec, path: str) -> Dict[str, list]:
    """Parse one labelled GLUE TSV file into columns sentence1[, sentence2], labels (read_tsv_rows)."""
    rows = read_tsv_rows(path)
    if task.header:
        header = rows[0]
        missing = [c for c in task.text_columns + (task.label_column,) if c not in header]
        if missing:
            raise InputError(
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
            raise InputError(
                f"{path}, line {lineno}: expected {width} tab-separated fields, got {len(row)}: {' | '.join(row)[:200]!r}"
            )
        raw = row[label_idx].strip()
        if task.is_regression:
            try:
                value = float(raw)
            except ValueError:
                raise InputError(f"{path}, line {lineno}: label {raw!r} is not a number") from None
            if not math.isfinite(value):
                raise InputError(f"{path}, line {lineno}: label {raw!r} is not a finite number")
        else:
            if raw not in task.labels:
                raise InputError(f"{path}, line {lineno}: label {raw!r} is not one of {list(task.labels)} (task {task.name!r})")
            value = task.labels.index(raw)
        columns["sentence1"].append(row[text_idx[0]])
        if len(text_idx) == 2:
            columns["sentence2"].append(row[text_idx[1]])
        labels.append(value)
    if not labels:
        raise InputError(f"{path}: no data rows")
    columns["labels"] = labels
    return columns


def load_glue_split(task: str, data_dir: str, split: str):
    """A split ('train' or 'dev'; MNLI also 'dev_mismatched') of a GLUE-format directory as a Dataset."""
    import datasets

    spec = get_task(task)
    if not isinstance(data_dir, (str, os.PathLike)) or not os.path.isdir(data_dir):
        raise InputError(f"data_dir must be an existing GLUE directory, got {data_dir!r}")
    path = _split_file(spec, os.fspath(data_dir), split)
    return datasets.Dataset.from_dict(read_glue_tsv(spec, path))


# ----------------------------------------------------------------------------- datasets library


def read_headed_tsv(spec: TaskSpec, path: str) -> Dict[str, list]:
    """A TSV file of the task: in the task's GLUE layout (its header names, or CoLA's positional columns) it is
    read exactly as `--data-dir` reads it; otherwise its first line names the columns (sentence1/sentence2/
    label or the hub's names), every line must have as many fields, and labels are mapped by normalize_columns."""
    rows = read_tsv_rows(path)
    header = rows[0]
    glue_layout = (set(spec.text_columns) | {spec.label_column}) <= set(header) if spec.header else True
    if glue_layout:
        return read_glue_tsv(spec, path)
    columns: Dict[str, list] = {name: [] for name in header}
    for lineno, row in enumerate(rows[1:], start=2):
        if not row:
            continue
        if len(row) != len(header):
            raise InputError(f"{path}, line {lineno}: expected {len(header)} tab-separated fields (as the header "
                             f"{header}), got {len(row)}: {' | '.join(row)[:200]!r}")
        for name, value in zip(header, row):
            columns[name].append(value)
    if not any(columns.values()):
        raise InputError(f"{path}: no data rows")
    label = next((c for c in ("labels", "label", spec.label_column) if c in columns), None)
    if label is not None and spec.is_regression:
        for lineno, raw in enumerate(columns[label], start=2):
            try:
                columns[label][lineno - 2] = float(raw)
            except ValueError:
                raise InputError(f"{path}, line {lineno}: label {raw!r} is not a number") from None
    elif label is not None and all(v.strip().lstrip("-").isdigit() for v in columns[label]):
        columns[label] = [int(v) for v in columns[label]]  # class ids written as numbers
    return columns


def load_datasets_split(task: str, source: str, split: str):
    """A split from a local file or the `datasets` hub: .tsv (read_headed_tsv: quotes are data), .csv (quoted, as
    CSV is), .json/.jsonl, .parquet, or a hub name (e.g. "glue" or "nyu-mll/glue", needs network). Columns are
    renamed to sentence1/sentence2/labels."""
    import datasets

    spec = get_task(task)
    ext = os.path.splitext(source)[1].lower()
    if os.path.exists(source):
        if not os.path.isfile(source):
            raise InputError(f"data file {source!r} is not a file")
        if ext == ".tsv":
            return normalize_columns(spec, datasets.Dataset.from_dict(read_headed_tsv(spec, source)), source)
        builder = {".csv": "csv", ".json": "json", ".jsonl": "json", ".parquet": "parquet"}.get(ext)
        if builder is None:
            raise InputError(f"data file {source!r}: expected a .csv, .tsv, .json, .jsonl or .parquet file")
        try:
            ds = datasets.load_dataset(builder, data_files={"data": source}, split="data")
        except Exception as e:
            raise InputError(f"data file {source!r} could not be read by datasets ({builder}): {e}") from e
    else:
        hub_split = {"dev": "validation_matched" if spec.name == "mnli" else "validation"}.get(split, split)
        config = spec.name.replace("-", "")
        try:
            ds = datasets.load_dataset(source, config, split=hub_split)
        except Exception as e:  # offline, unknown name, unknown config: say which source failed
            raise InputError(
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
        raise InputError(f"{source}: columns {sorted(cols)} lack the text column(s) {list(spec.hub_text_columns)} of task {spec.name!r}")
    label = next((c for c in ("labels", "label", spec.label_column) if c in cols), None)
    if label is None:
        raise InputError(f"{source}: columns {sorted(cols)} have no 'label' or 'labels' column")
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
                    raise InputError(f"{source}: label {v!r} is not one of {list(spec.labels)} (task {spec.name!r})")
                out.append(spec.labels.index(v))
            return {"labels": out}

        ds = ds.map(to_id, batched=True)
    elif spec.name in HUB_LABEL_ORDER and not os.path.exists(source):
        order = HUB_LABEL_ORDER[spec.name]
        ds = ds.map(lambda b: {"labels": [spec.labels.index(order[v]) for v in b["labels"]]}, batched=True)
    return ds


def load_split(task: str, split: str, *, data_dir: Optional[str] = None, source: Optional[str] = None):
    """One split from a GLUE directory (data_dir) or from the datasets library (source: file or hub name)."""
    if (data_dir is None) == (source is None):
        raise InputError("give exactly one of data_dir (a GLUE-format directory) or source (a data file or hub dataset name)")
    if data_dir is not None:
        return load_glue_split(task, data_dir, split)
    return load_datasets_split(task, source, split)


__all__ = ["read_tsv_rows", "read_headed_tsv", "read_glue_tsv", "load_glue_split", "load_datasets_split", "normalize_columns", "load_split"]
