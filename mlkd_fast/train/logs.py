"""Run logs: one JSON object per line (the log of record), TensorBoard when installed, tqdm bars."""
from __future__ import annotations

import json
import time
from typing import Dict, Optional


class MetricLogger:
    """Appends one JSON object per line to `path`; mirrors scalars to TensorBoard when it is installed."""

    def __init__(self, path: str, tensorboard_dir: Optional[str] = None, enabled: bool = True):
        self.path = path if enabled else None  # disabled: a data-parallel rank other than 0 writes nothing
        self.writer = None
        if tensorboard_dir is not None and enabled:
            try:
                from torch.utils.tensorboard import SummaryWriter

                self.writer = SummaryWriter(tensorboard_dir)
            except Exception:  # tensorboard is optional: JSONL is the log of record
                self.writer = None

    def log(self, record: Dict, step: Optional[int] = None) -> None:
        if self.path is None:
            return
        record = dict(record, time=round(time.time(), 3))
        with open(self.path, "a", encoding="utf-8") as f:
            f.write(json.dumps(record) + "\n")
        if self.writer is not None and step is not None:
            prefix = record.get("kind", "train")
            for k, v in record.items():
                if isinstance(v, (int, float)) and not isinstance(v, bool) and k not in ("step", "epoch", "stage", "time"):
                    self.writer.add_scalar(f"{prefix}/{k}", v, step)
            for k, v in record.get("metrics", {}).items():
                self.writer.add_scalar(f"dev/{k}", v, step)

    def close(self) -> None:
        if self.writer is not None:
            self.writer.close()


def progress_bar(total: int, initial: int, desc: str, enabled: bool):
    from tqdm.auto import tqdm

    return tqdm(total=total, initial=initial, desc=desc, disable=not enabled, dynamic_ncols=True, leave=False)


__all__ = ["MetricLogger", "progress_bar"]
