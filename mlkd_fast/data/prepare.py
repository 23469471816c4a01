"""Tokenisation and checks that turn a raw or tokenised Dataset into the training/eval input of a run."""
from __future__ import annotations

from typing import Optional

import numpy as np

from mlkd_fast.errors import InputError, InputTypeError

TOKENIZED = ("input_ids", "attention_mask")


def is_tokenized(ds) -> bool:
    return set(TOKENIZED) <= set(ds.column_names)


def tokenize_dataset(ds, tokenizer, max_seq_length: int, name: str = "dataset"):
    """Raw sentence1[, sentence2], labels -> input_ids, attention_mask, token_type_ids, labels (unpadded)."""
    cols = set(ds.column_names)
    if "sentence1" not in cols:
        raise InputError(f"{name} has neither tokenised columns {list(TOKENIZED)} nor raw text column 'sentence1' (columns: {sorted(cols)})")
    if tokenizer is None:
        raise InputError(f"{name} holds raw text: pass tokenizer= to tokenise it (or give tokenised input_ids/attention_mask)")
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
        raise InputTypeError(f"{name} must be a datasets.Dataset, got {type(ds).__name__}")
    if len(ds) == 0:
        raise InputError(f"{name} is empty")
    if "labels" not in ds.column_names:
        raise InputError(f"{name} has no 'labels' column (columns: {ds.column_names})")
    if not is_tokenized(ds):
        ds = tokenize_dataset(ds, tokenizer, max_seq_length, name)
    _check_sequences(ds, name, max_seq_length)
    labels = np.asarray(ds["labels"])
    if num_labels == 1:
        if not np.issubdtype(labels.dtype, np.number):
            raise InputError(f"{name}: regression labels must be numbers, got dtype {labels.dtype}")
        if not np.isfinite(labels.astype(np.float64)).all():
            row = int(np.flatnonzero(~np.isfinite(labels.astype(np.float64)))[0])
            raise InputError(f"{name}: regression label of row {row} is {labels[row]}, not a finite number")
    else:
        if not np.issubdtype(labels.dtype, np.integer):
            raise InputError(f"{name}: classification labels must be integer class ids, got dtype {labels.dtype}")
        bad = labels[(labels < 0) | (labels >= num_labels)]
        if bad.size:
            raise InputError(f"{name}: label {int(bad[0])} is outside 0..{num_labels - 1} (the model has {num_labels} labels)")
    return ds.with_format(None)


def _check_sequences(ds, name: str, max_seq_length: int) -> None:
    """Every row's token columns have one length, at most max_seq_length (a tokenizer that cannot truncate
    to it, e.g. a pair at max length 2, leaves longer rows: refused, not trained on silently)."""
    columns = [c for c in ("input_ids", "attention_mask", "token_type_ids") if c in ds.column_names]
    lengths = {c: np.fromiter((len(x) for x in ds[c]), dtype=np.int64, count=len(ds)) for c in columns}
    for c in columns[1:]:
        differ = np.flatnonzero(lengths[c] != lengths["input_ids"])
        if differ.size:
            row = int(differ[0])
            raise InputError(f"{name}: row {row} has {lengths['input_ids'][row]} input_ids but {lengths[c][row]} {c}")
    too_long = np.flatnonzero(lengths["input_ids"] > max_seq_length)
    if too_long.size:
        row = int(too_long[0])
        raise InputError(
            f"{name}: row {row} has {lengths['input_ids'][row]} tokens, more than max_seq_length={max_seq_length} "
            f"({too_long.size} such rows; a sentence pair needs room for its special tokens, so raise max_seq_length)"
        )


def prepare_splits(train_data, eval_data, cfg, *, tokenizer, num_labels: int, qa: bool = False):
    """Tokenised (train, dev) for a run: train subsampled to cfg.max_train_samples; dev None without eval_data.
    Question answering (qa=True): training windows, and a squad.QADev of the dev examples and windows."""
    if hasattr(train_data, "select"):
        train_data = subset(train_data, cfg.max_train_samples, cfg.seed)
    if qa:
        from mlkd_fast.data.squad import prepare_qa

        return prepare_qa(train_data, eval_data, tokenizer=tokenizer, max_length=cfg.max_seq_length)
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


__all__ = ["TOKENIZED", "is_tokenized", "tokenize_dataset", "prepare_dataset", "prepare_splits", "subset"]
