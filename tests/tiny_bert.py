"""Tiny random BERTs, a word-level tokenizer and small data that the trainer tests write themselves."""
from __future__ import annotations

import os

import numpy as np
import pytest
import torch

WORDS = ["good", "bad", "movie", "film", "plot", "actor", "great", "awful", "the", "a", "was", "is", "very", "not"]
SPECIAL = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]
VOCAB = 64


def tiny_config(layers=4, hidden=32, heads=4, intermediate=64, num_labels=2, attn="sdpa"):
    from transformers import BertConfig

    cfg = BertConfig(
        vocab_size=VOCAB,
        hidden_size=hidden,
        num_hidden_layers=layers,
        num_attention_heads=heads,
        intermediate_size=intermediate,
        max_position_embeddings=128,  # the configs' default max_seq_length fits
        num_labels=num_labels,
        pad_token_id=0,
    )
    cfg._attn_implementation = attn
    return cfg


def tiny_bert(layers=4, hidden=32, heads=4, intermediate=64, num_labels=2, seed=0, attn="sdpa"):
    from transformers import BertForSequenceClassification

    torch.manual_seed(seed)
    return BertForSequenceClassification(tiny_config(layers, hidden, heads, intermediate, num_labels, attn))


def tokenized_dataset(n=24, seed=0, num_labels=2, min_len=5, max_len=12):
    """Random token ids (5..VOCAB-1) with [CLS]=2 / [SEP]=3; labels depend on the tokens (learnable)."""
    import datasets

    rng = np.random.default_rng(seed)
    ids, masks, types, labels = [], [], [], []
    for _ in range(n):
        length = int(rng.integers(min_len, max_len + 1))
        body = rng.integers(5, VOCAB, size=length - 2).tolist()
        seq = [2] + body + [3]
        ids.append(seq)
        masks.append([1] * length)
        types.append([0] * length)
        if num_labels == 1:
            labels.append(float(np.mean(body) / VOCAB * 5))
        else:
            labels.append(int(sum(body) % num_labels))
    return datasets.Dataset.from_dict({"input_ids": ids, "attention_mask": masks, "token_type_ids": types, "labels": labels})


def write_vocab(folder: str) -> str:
    path = os.path.join(folder, "vocab.txt")
    with open(path, "w", encoding="utf-8") as f:
        f.write("\n".join(SPECIAL + WORDS) + "\n")
    return path


def tiny_tokenizer(folder: str):
    """A word-level BERT tokenizer over SPECIAL + WORDS. The vocabulary is passed as a mapping: transformers 5
    ignores vocab_file= in the constructor and would build a 5-token tokenizer that maps every word to [UNK]."""
    from transformers import BertTokenizerFast

    with open(write_vocab(folder), encoding="utf-8") as f:
        vocab = {token: i for i, token in enumerate(f.read().split())}
    return BertTokenizerFast(vocab=vocab, do_lower_case=True)


def write_mrpc(folder: str, n_train=16, n_dev=8, seed=0) -> str:
    """A GLUE-format MRPC directory (BOM header, 5 tab-separated columns) with sentences made of WORDS."""
    rng = np.random.default_rng(seed)
    os.makedirs(os.path.join(folder, "MRPC"), exist_ok=True)
    for split, n in (("train", n_train), ("dev", n_dev)):
        lines = ["\ufeffQuality\t#1 ID\t#2 ID\t#1 String\t#2 String"]
        for i in range(n):
            a = " ".join(rng.choice(WORDS, size=5))
            b = " ".join(rng.choice(WORDS, size=4))
            lines.append(f"{i % 2}\t{1000 + i}\t{2000 + i}\t{a}\t{b}")
        with open(os.path.join(folder, "MRPC", f"{split}.tsv"), "w", encoding="utf-8") as f:
            f.write("\n".join(lines) + "\n")
    return folder


@pytest.fixture
def one_thread():
    """Tiny models gain nothing from threads, and on a shared 2-core machine OpenMP threads that
    wait on each other make them 10x slower: run the trainer tests on one thread."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


class Crash(Exception):
    """Raised by a fault hook: the process 'dies' at that instant."""


class crash_at_save:
    """Context manager: the n-th resume-state write raises Crash instead of writing (a kill at that instant);
    `calls` holds the global step of every write attempted."""

    def __init__(self, monkeypatch, n: int):
        from mlkd_fast.train import checkpoint

        self.monkeypatch, self.n, self.calls, self.module = monkeypatch, n, [], checkpoint
        self.real = checkpoint.save_state

    def __enter__(self):
        def save(output_dir, state):
            self.calls.append(state["state"]["global_step"])
            if len(self.calls) == self.n:
                raise Crash()
            return self.real(output_dir, state)

        self.monkeypatch.setattr(self.module, "save_state", save)
        return self

    def __exit__(self, exc_type, *exc):
        self.monkeypatch.setattr(self.module, "save_state", self.real)
        return exc_type is Crash  # the crash is the point: swallowed
