"""Seeded batch order and dynamic-padding collation: a pure function of (seed, epoch), so resume replays it."""
from __future__ import annotations

from typing import Dict, Iterator, Sequence, Tuple

import numpy as np
import torch


COLUMNS = ("input_ids", "attention_mask", "token_type_ids", "labels", "start_positions", "end_positions")


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
        if "labels" in rows[0]:  # unlabelled text (general distillation) has none
            dtype = torch.float32 if self.regression else torch.long
            batch["labels"] = torch.tensor([r["labels"] for r in rows], dtype=dtype)
        for key in ("start_positions", "end_positions", "index"):  # question answering; the rows' dataset index
            if key in rows[0]:
                batch[key] = torch.tensor([r[key] for r in rows], dtype=torch.long)
        return batch


def batches(ds, order: Sequence[int], batch_size: int, collate: Collator, start: int = 0,
            shard: Tuple[int, int] = (0, 1), drop_last: bool = False) -> Iterator[Dict[str, torch.Tensor]]:
    """Yield collated batches of `ds` in `order`, skipping the first `start` batches (resume).

    shard=(rank, world): each global batch is cut into `world` equal contiguous shards and rank's shard is
    yielded; a final partial batch is cut down to a multiple of `world` rows (a whole batch when smaller).
    drop_last: the final partial batch is not yielded at all.
    """
    rank, world = shard
    cols = [c for c in COLUMNS if c in ds.column_names]
    for b in range(start, num_batches(len(order), batch_size, world, drop_last)):
        idx = [int(i) for i in order[b * batch_size : (b + 1) * batch_size]]
        if world > 1:
            per_rank = len(idx) // world
            idx = idx[rank * per_rank : (rank + 1) * per_rank]
        chunk = ds[idx]
        rows = [{"index": idx[i], **{c: chunk[c][i] for c in cols}} for i in range(len(idx))]
        yield collate(rows)


def num_batches(n: int, batch_size: int, world: int = 1, drop_last: bool = False) -> int:
    """Batches per epoch: every full batch, and the final partial one when it has a row for every rank
    (never with drop_last)."""
    full, tail = divmod(n, batch_size)
    return full + (1 if tail >= world and not drop_last else 0)


__all__ = ["epoch_order", "Collator", "batches", "num_batches"]
