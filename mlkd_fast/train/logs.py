"""Run logs: one JSON object per line (the log of record), TensorBoard when asked for (report_to), and progress:
tqdm bars on a terminal, a plain line every tenth of an epoch elsewhere (a log file gets no carriage-return
frames)."""
from __future__ import annotations

import json
import sys
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
            except Exception as e:  # asked for and missing: say so (JSONL stays the log of record)
                raise ImportError(f"report_to='tensorboard' needs tensorboard: pip install tensorboard ({e})") from e

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


class LineProgress:
    """tqdm's update/set_postfix/close for a non-terminal: one line per tenth of the total, to stderr."""

    def __init__(self, total: int, initial: int, desc: str, stream=None):
        self.total, self.n, self.desc = total, initial, desc
        self.every = max(1, total // 10)
        self.postfix: Dict[str, str] = {}
        self.stream = stream if stream is not None else sys.stderr
        self.started = time.perf_counter()

    def set_postfix(self, postfix: Dict[str, str]) -> None:
        self.postfix = dict(postfix)

    def update(self, n: int = 1) -> None:
        self.n += n
        if self.n % self.every == 0 or self.n == self.total:
            extra = " ".join(f"{k}={v}" for k, v in self.postfix.items())
            print(f"{self.desc}: {self.n}/{self.total} ({time.perf_counter() - self.started:.0f} s) {extra}".rstrip(),
                  file=self.stream, flush=True)

    def close(self) -> None:
        pass


def progress_bar(total: int, initial: int, desc: str, enabled: bool, stream=None):
    """A tqdm bar on a terminal; LineProgress lines when stderr is a file or pipe; nothing when disabled."""
    from tqdm.auto import tqdm

    stream = stream if stream is not None else sys.stderr
    if enabled and not (hasattr(stream, "isatty") and stream.isatty()):
        return LineProgress(total, initial, desc, stream)
    return tqdm(total=total, initial=initial, desc=desc, disable=not enabled, dynamic_ncols=True, leave=False)


__all__ = ["MetricLogger", "LineProgress", "progress_bar"]
