"""GLUE task specifications: columns, labels and the main metric of each task."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Dict, Optional, Tuple

from mlkd_fast.errors import InputError, InputTypeError


@dataclass(frozen=True)
class TaskSpec:
    name: str  # canonical lower-case name
    folder: str  # GLUE directory name
    labels: Optional[Tuple[str, ...]]  # label strings in class-id order; None = regression
    text_columns: Tuple[str, ...]  # header names of the text columns in the GLUE TSV
    label_column: str  # header name of the label column in the GLUE TSV
    hub_text_columns: Tuple[str, ...]  # column names in the `datasets` hub version
    # the metric that picks the kept checkpoint. Accuracy for MRPC and QQP as in the TinyBERT/MLKD code: their F1
    # is of the positive (majority) class, so it rewards answering "paraphrase" always (F1 81.2 on MRPC dev)
    metric: str
    dev_split: str = "dev"
    header: bool = True  # CoLA's train/dev files have no header (as released by GLUE)
    positional: Optional[Tuple[int, ...]] = None  # for header-less files: text columns..., label column
    qa: bool = False  # extractive question answering (SQuAD): start/end positions instead of labels
    version_2: bool = False  # SQuAD v2.0: questions may have no answer

    @property
    def num_labels(self) -> int:
        if self.qa:
            return 2  # the QA head's outputs: start and end logits per token
        return 1 if self.labels is None else len(self.labels)

    @property
    def is_regression(self) -> bool:
        return self.labels is None and not self.qa


TASKS: Dict[str, TaskSpec] = {
    t.name: t
    for t in (
        TaskSpec("cola", "CoLA", ("0", "1"), ("sentence",), "label", ("sentence",), "mcc", header=False, positional=(3, 1)),
        TaskSpec("sst-2", "SST-2", ("0", "1"), ("sentence",), "label", ("sentence",), "accuracy"),
        TaskSpec("mrpc", "MRPC", ("0", "1"), ("#1 String", "#2 String"), "Quality", ("sentence1", "sentence2"), "accuracy"),
        TaskSpec("qqp", "QQP", ("0", "1"), ("question1", "question2"), "is_duplicate", ("question1", "question2"), "accuracy"),
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
        TaskSpec("squad", "SQuAD", None, ("question", "context"), "answers", ("question", "context"), "f1", qa=True),
        TaskSpec("squad_v2", "SQuAD", None, ("question", "context"), "answers", ("question", "context"), "f1", qa=True,
                 version_2=True),
    )
}
_ALIASES = {"squad-v2": "squad_v2", "squad2": "squad_v2", "squad1": "squad", "squad_v1": "squad", "sst2": "sst-2", "stsb": "sts-b", "sts": "sts-b", "mnli-m": "mnli", "mnli_matched": "mnli"}
# The hub's GLUE uses integer labels in this order; MNLI's hub order differs from the TSV strings' sorted order.
HUB_LABEL_ORDER = {"mnli": ("entailment", "neutral", "contradiction"), "qnli": ("entailment", "not_entailment"), "rte": ("entailment", "not_entailment")}


def get_task(name: str) -> TaskSpec:
    if not isinstance(name, str):
        raise InputTypeError(f"task must be a task name (str), got {type(name).__name__}")
    key = name.strip().lower()
    key = _ALIASES.get(key, key)
    if key not in TASKS:
        raise InputError(f"unknown task {name!r}; known tasks: {sorted(TASKS)}")
    return TASKS[key]


__all__ = ["TaskSpec", "TASKS", "HUB_LABEL_ORDER", "get_task"]
