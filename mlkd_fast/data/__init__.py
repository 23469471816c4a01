"""The data floor: task specs, readers, tokenisation, batching and the official metrics.

Imports nothing of the op layer or the trainer; `datasets` and `transformers`
load on first use, inside the readers.
"""
from mlkd_fast.data.batching import Collator, batches, epoch_order, num_batches
from mlkd_fast.data.glue import (
    load_datasets_split,
    load_glue_split,
    load_split,
    normalize_columns,
    read_glue_tsv,
)
from mlkd_fast.data.metrics import compute_metrics, main_metric
from mlkd_fast.data.prepare import (
    prepare_dataset,
    prepare_splits,
    subset,
    tokenize_dataset,
)
from mlkd_fast.data.tasks import TASKS, TaskSpec, get_task

__all__ = [
    "TASKS", "TaskSpec", "get_task",
    "read_glue_tsv", "load_glue_split", "load_datasets_split", "normalize_columns", "load_split",
    "tokenize_dataset", "prepare_dataset", "prepare_splits", "subset",
    "epoch_order", "Collator", "batches", "num_batches",
    "compute_metrics", "main_metric",
]
