"""The official GLUE metric of each task, in plain numpy (no scipy/sklearn needed).

CoLA: Matthews correlation; MRPC/QQP: F1 (positive class 1) and accuracy;
STS-B: Pearson and Spearman; the others: accuracy. Values are fractions in [0, 1]
(correlations in [-1, 1]).
"""
from __future__ import annotations

from typing import Dict

import numpy as np

from mlkd_fast.data.tasks import get_task
from mlkd_fast.errors import InputError


def accuracy(preds: np.ndarray, labels: np.ndarray) -> float:
    return float((preds == labels).mean())


def f1_binary(preds: np.ndarray, labels: np.ndarray) -> float:
    tp = float(((preds == 1) & (labels == 1)).sum())
    fp = float(((preds == 1) & (labels == 0)).sum())
    fn = float(((preds == 0) & (labels == 1)).sum())
    return 0.0 if tp == 0 else 2 * tp / (2 * tp + fp + fn)


def matthews(preds: np.ndarray, labels: np.ndarray) -> float:
    tp = float(((preds == 1) & (labels == 1)).sum())
    tn = float(((preds == 0) & (labels == 0)).sum())
    fp = float(((preds == 1) & (labels == 0)).sum())
    fn = float(((preds == 0) & (labels == 1)).sum())
    denom = np.sqrt((tp + fp) * (tp + fn) * (tn + fp) * (tn + fn))
    return 0.0 if denom == 0 else float((tp * tn - fp * fn) / denom)


def pearson(x: np.ndarray, y: np.ndarray) -> float:
    x = x.astype(np.float64) - x.mean()
    y = y.astype(np.float64) - y.mean()
    denom = np.sqrt((x * x).sum() * (y * y).sum())
    return 0.0 if denom == 0 else float((x * y).sum() / denom)


def _ranks(x: np.ndarray) -> np.ndarray:
    """Ranks with ties given their average rank (as scipy.stats.rankdata)."""
    order = np.argsort(x, kind="mergesort")
    ranks = np.empty(len(x), dtype=np.float64)
    sx = x[order]
    i = 0
    while i < len(x):
        j = i
        while j + 1 < len(x) and sx[j + 1] == sx[i]:
            j += 1
        ranks[order[i : j + 1]] = (i + j) / 2.0 + 1.0
        i = j + 1
    return ranks


def spearman(x: np.ndarray, y: np.ndarray) -> float:
    return pearson(_ranks(np.asarray(x)), _ranks(np.asarray(y)))


def compute_metrics(task, logits, labels) -> Dict[str, float]:
    """Metrics of `task` (a TaskSpec, a task name, or None = accuracy / correlations by logits width)."""
    logits = np.asarray(logits)
    labels = np.asarray(labels)
    for name, values in (("predictions", logits), ("labels", labels)):
        if np.issubdtype(values.dtype, np.floating) and not np.isfinite(values).all():
            bad = int((~np.isfinite(values)).sum())
            raise InputError(f"{name} hold {bad} non-finite value(s) of {values.size}: no metric is computed from them "
                             "(a diverged model, or non-finite weights or labels)")
    spec = get_task(task) if isinstance(task, str) else task
    regression = spec.is_regression if spec is not None else (logits.ndim == 1 or logits.shape[-1] == 1)
    if regression:
        preds = logits.reshape(-1)
        return {"pearson": pearson(preds, labels), "spearman": spearman(preds, labels)}
    preds = logits.argmax(-1)
    name = spec.name if spec is not None else None
    if name == "cola":
        return {"mcc": matthews(preds, labels), "accuracy": accuracy(preds, labels)}
    if name in ("mrpc", "qqp"):
        return {"f1": f1_binary(preds, labels), "accuracy": accuracy(preds, labels)}
    return {"accuracy": accuracy(preds, labels)}


def main_metric(task, regression: bool = False) -> str:
    """The metric used to pick the best checkpoint (the task's main metric)."""
    if task is None:
        return "spearman" if regression else "accuracy"
    spec = get_task(task) if isinstance(task, str) else task
    return spec.metric


__all__ = ["accuracy", "f1_binary", "matthews", "pearson", "spearman", "compute_metrics", "main_metric"]
