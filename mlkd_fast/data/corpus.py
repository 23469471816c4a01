"""Unlabelled text for general (task-agnostic) distillation: read line by line, tokenised in chunks, packed
into sequences of up to max_length tokens, and streamed into an on-disk Arrow dataset.

    text files / folders / a `datasets` text dataset
        -> lines (blank lines skipped; never the whole corpus in memory)
        -> token ids, CHUNK lines at a time (no special tokens)
        -> packed: [CLS] line [SEP] line [SEP] ... up to max_length; a line longer than a sequence is cut
        -> datasets.Dataset.from_generator: Arrow shards on disk, memory-mapped when read
The packed dataset has input_ids, attention_mask and token_type_ids (all 0), no labels; its order is the
corpus order (the trainer shuffles per epoch with its seed).
"""
from __future__ import annotations

import os
from typing import Iterable, Iterator, List, Sequence, Union

from mlkd_fast.errors import InputError, InputTypeError

CHUNK = 1000  # lines tokenised per call


def corpus_files(paths: Sequence[Union[str, os.PathLike]]) -> List[str]:
    """The text files of `paths`: files as given, folders walked (sorted, hidden files skipped)."""
    if isinstance(paths, (str, os.PathLike)):
        paths = [paths]
    files: List[str] = []
    for path in paths:
        path = os.fspath(path)
        if os.path.isfile(path):
            files.append(path)
        elif os.path.isdir(path):
            for root, dirs, names in os.walk(path):
                dirs[:] = sorted(d for d in dirs if not d.startswith("."))
                files += [os.path.join(root, n) for n in sorted(names) if not n.startswith(".")]
        else:
            raise InputError(f"corpus path {path!r} is neither a file nor a folder")
    if not files:
        raise InputError(f"the corpus {list(map(os.fspath, paths))} holds no files")
    return files


def iter_lines(corpus) -> Iterator[str]:
    """The non-blank lines of the corpus: paths (files and folders), or a datasets (Iterable)Dataset with a
    'text' column."""
    import datasets

    if isinstance(corpus, (datasets.Dataset, datasets.IterableDataset)):
        if "text" not in (corpus.column_names or []):
            raise InputError(f"the corpus dataset has no 'text' column (columns: {corpus.column_names})")
        for row in corpus:
            if row["text"] and row["text"].strip():
                yield row["text"].strip()
        return
    if not isinstance(corpus, (str, os.PathLike, list, tuple)):
        raise InputTypeError(f"corpus must be text file/folder paths or a datasets text dataset, got {type(corpus).__name__}")
    for path in corpus_files(corpus):
        for line in read_text_lines(path):
            if line.strip():
                yield line.strip()


# first bytes of compressed files: read transparently, or refused with what to do
COMPRESSED = {b"\x1f\x8b": "gzip", b"BZh": "bz2", b"\xfd7zXZ\x00": "xz"}
NUL = bytes(1)
REFUSED = {b"PK\x03\x04": "zip", b"\x28\xb5\x2f\xfd": "zstd", b"7z\xbc\xaf\x27\x1c": "7z"}


def read_text_lines(path: str) -> Iterator[str]:
    """The lines of a UTF-8 text file (a BOM is dropped), decompressed when it is gzip, bz2 or xz (by its first
    bytes, whatever its name). Other binary files and text that is not UTF-8 are refused with the file, line and
    byte: never decoded into replacement characters."""
    with open(path, "rb") as f:
        head = f.read(8)
    kind = next((name for magic, name in COMPRESSED.items() if head.startswith(magic)), None)
    refused = next((name for magic, name in REFUSED.items() if head.startswith(magic)), None)
    if refused:
        raise InputError(f"corpus file {path!r} is a {refused} archive: extract its text files first")
    if kind == "gzip":
        import gzip
        opener = gzip.open
    elif kind == "bz2":
        import bz2
        opener = bz2.open
    elif kind == "xz":
        import lzma
        opener = lzma.open
    else:
        opener = open
    with opener(path, "rb") as f:
        offset = 0
        for lineno, raw in enumerate(f, start=1):
            where = f"corpus file {path!r}" + (f" ({kind})" if kind else "")
            nul = raw.find(NUL)
            if nul >= 0:
                raise InputError(f"{where} is binary, not text: a NUL byte at byte offset {offset + nul} (line {lineno})")
            try:
                text = raw.decode("utf-8")
            except UnicodeDecodeError as e:
                raise InputError(f"{where}, line {lineno}: not UTF-8 text (byte offset {offset + e.start}: "
                                 f"{raw[e.start:e.start + 4]!r})") from None
            yield text.lstrip("\ufeff") if lineno == 1 else text
            offset += len(raw)


def pack(lines: Iterable[str], tokenizer, max_length: int) -> Iterator[dict]:
    """Rows of packed sequences: [CLS] a [SEP] b [SEP] ..., each at most max_length tokens."""
    if max_length < 3:
        raise InputError(f"max_length must be >= 3 to hold [CLS] x [SEP], got {max_length}")
    cls, sep = tokenizer.cls_token_id, tokenizer.sep_token_id
    if cls is None or sep is None:
        raise InputError("the tokenizer has no [CLS]/[SEP] (cls_token_id/sep_token_id): packing needs both")
    room = max_length - 1  # after [CLS]
    current: List[int] = []
    for ids in _token_ids(lines, tokenizer):
        while ids:
            if current and len(current) + len(ids) + 1 > room:
                yield _row([cls] + current)
                current = []
            take = ids[: room - 1]  # a line longer than a whole sequence is cut across sequences
            ids = ids[room - 1:]
            current += take + [sep]
    if current:
        yield _row([cls] + current)


def _token_ids(lines: Iterable[str], tokenizer) -> Iterator[List[int]]:
    chunk: List[str] = []
    for line in lines:
        chunk.append(line)
        if len(chunk) == CHUNK:
            yield from tokenizer(chunk, add_special_tokens=False)["input_ids"]
            chunk = []
    if chunk:
        yield from tokenizer(chunk, add_special_tokens=False)["input_ids"]


def _row(ids: List[int]) -> dict:
    return {"input_ids": ids, "attention_mask": [1] * len(ids), "token_type_ids": [0] * len(ids)}


def corpus_fingerprint(corpus, tokenizer, max_length: int) -> str:
    """What the packed dataset depends on: every file's path, size and mtime (or the dataset's fingerprint),
    the tokenizer's vocabulary and max_length. A changed input never reuses a stale packed corpus."""
    import hashlib

    import datasets

    h = hashlib.sha256()
    if isinstance(corpus, datasets.Dataset):
        h.update(corpus._fingerprint.encode())
    elif isinstance(corpus, datasets.IterableDataset):
        raise InputError("an IterableDataset corpus cannot be fingerprinted: pass a Dataset or text files")
    else:
        for path in corpus_files(corpus):
            st = os.stat(path)
            h.update(f"{os.path.abspath(path)}|{st.st_size}|{st.st_mtime_ns}\n".encode())
    vocab = sorted(tokenizer.get_vocab().items())
    h.update(repr((vocab, type(tokenizer).__name__, max_length)).encode())
    return h.hexdigest()[:16]


def packed_corpus(corpus, tokenizer, max_length: int, cache_dir: str):
    """The packed corpus as a datasets.Dataset written to `cache_dir` as it streams (memory-mapped); reused
    from there while the corpus, tokenizer and max_length are unchanged."""
    import datasets

    def rows():
        yield from pack(iter_lines(corpus), tokenizer, max_length)

    if next(pack(iter_lines(corpus), tokenizer, max_length), None) is None:  # before datasets sees an empty stream
        raise InputError("the corpus holds no text")
    os.makedirs(cache_dir, exist_ok=True)
    ds = datasets.Dataset.from_generator(rows, cache_dir=cache_dir,
                                         fingerprint=corpus_fingerprint(corpus, tokenizer, max_length))
    if len(ds) == 0:
        raise InputError("the corpus holds no text")
    return ds


__all__ = ["corpus_files", "iter_lines", "read_text_lines", "pack", "corpus_fingerprint", "packed_corpus"]
