"""Dev-set evaluation (the task's official metric), inference latency and model size."""
from __future__ import annotations

import os
import statistics
import time
from typing import Dict, Optional

import numpy as np
import torch
import torch.nn as nn

from mlkd_fast.data.batching import Collator, batches
from mlkd_fast.data.metrics import compute_metrics
from mlkd_fast.data.prepare import prepare_dataset
from mlkd_fast.data.squad import QADev, official_json, prepare_qa, span_predictions, squad_metrics
from mlkd_fast.data.tasks import get_task
from mlkd_fast.train.config import check_int
from mlkd_fast.train.atomic import save_json
from mlkd_fast.train.models import (
    check_fits,
    check_head,
    check_task,
    count_parameters,
    is_qa_model,
    load_for_task,
    model_inputs,
    pad_id,
    resolve_device,
)


@torch.no_grad()
def predict(model: nn.Module, ds, batch_size: int, device: torch.device, pad_token_id: int = 0):
    """Logits (N, C) and labels (N,) of a tokenised dataset, in dataset order."""
    collate = Collator(pad_token_id, regression=int(model.config.num_labels) == 1)
    logits, labels = [], []
    for batch, out in _outputs(model, ds, batch_size, device, collate):
        logits.append(out.logits.float().cpu())
        labels.append(batch["labels"])
    return torch.cat(logits).numpy(), torch.cat(labels).numpy()


@torch.no_grad()
def _outputs(model: nn.Module, ds, batch_size: int, device: torch.device, collate: Collator):
    """(batch, model output) over a dataset in order, in eval mode; the model's mode is restored after."""
    was_training = model.training
    model.eval()
    try:
        for batch in batches(ds, np.arange(len(ds)), batch_size, collate):
            yield batch, model(**{k: v.to(device) for k, v in model_inputs(model, batch).items()})
    finally:
        model.train(was_training)


def evaluate_model(model: nn.Module, ds, task, batch_size: int, device: torch.device, pad_token_id: int = 0,
                   spans: Optional[Dict] = None, predictions_dir: Optional[str] = None,
                   keep_predictions: Optional[list] = None) -> Dict[str, float]:
    """The task's metrics on a dev set: a tokenised dataset, or a squad.QADev (the official scores). For question
    answering, `spans` holds span_predictions' options (n_best, max_answer_length, null_threshold),
    `predictions_dir`, when given, receives the reference scripts' prediction files, and `keep_predictions`, a
    list, receives what write_predictions needs (the training loop writes only a kept model's)."""
    if isinstance(ds, QADev):
        start, end = predict_spans(model, ds.windows, batch_size, device, pad_token_id)
        version_2 = bool(task is not None and task.version_2)
        found = span_predictions(ds.examples, ds.windows, start, end, version_2=version_2, **(spans or {}))
        metrics = squad_metrics(found.text, ds.examples, version_2=version_2,
                                null_odds=found.null_odds if version_2 else None)
        if predictions_dir is not None:
            write_predictions(predictions_dir, found, version_2, metrics)
        if keep_predictions is not None:
            keep_predictions.append((found, version_2, metrics))
        return metrics
    logits, labels = predict(model, ds, batch_size, device, pad_token_id)
    return compute_metrics(task, logits, labels)


def write_predictions(folder: str, found, version_2: bool, metrics: Dict[str, float]) -> None:
    """The files the official SQuAD scripts read (predictions.json, nbest_predictions.json, v2.0 null_odds.json)
    and eval.json, what they would print; each written whole or not at all."""
    os.makedirs(folder, exist_ok=True)
    for name, obj in found.files(version_2).items():
        save_json(os.path.join(folder, name), obj)
    save_json(os.path.join(folder, "eval.json"), official_json(metrics))


@torch.no_grad()
def predict_spans(model: nn.Module, windows, batch_size: int, device: torch.device, pad_token_id: int = 0):
    """Start and end logits (N, L_max) of every window, in order (padded positions: -inf)."""
    length = max(len(x) for x in windows["input_ids"])
    start = np.full((len(windows), length), -np.inf, dtype=np.float32)
    end = start.copy()
    row = 0
    for batch, out in _outputs(model, windows, batch_size, device, Collator(pad_token_id)):
        n, L = batch["input_ids"].shape
        start[row:row + n, :L] = out.start_logits.float().cpu().numpy()
        end[row:row + n, :L] = out.end_logits.float().cpu().numpy()
        row += n
    return start, end


def _timing_batches(model, ds, batch_size: int, device: torch.device, pad_token_id: int, count: int):
    collate = Collator(pad_token_id, regression=int(model.config.num_labels) == 1)
    prepared = []
    for i, batch in enumerate(batches(ds, np.arange(len(ds)), batch_size, collate)):
        if i >= count:
            break
        prepared.append({k: v.to(device) for k, v in model_inputs(model, batch).items()})
    return prepared


@torch.no_grad()
def measure_latency(models, datasets, batch_size: int, device: torch.device, pad_token_ids, num_batches: int = 10, warmup: int = 2):
    """Wall-clock milliseconds per forward pass over the first dev batches (dataset order), one dict per model.

    With several models the timings are interleaved batch by batch (model A batch i, model B batch i, ...),
    so that load from other processes on a shared machine hits every model alike and their ratio holds.
    """
    prepared = [_timing_batches(m, d, batch_size, device, p, num_batches + warmup) for m, d, p in zip(models, datasets, pad_token_ids)]
    times = [[] for _ in models]
    for m in models:
        m.eval()
    for i in range(max(len(p) for p in prepared)):
        for j, m in enumerate(models):
            if i >= len(prepared[j]):
                continue
            if device.type == "cuda":
                torch.cuda.synchronize(device)
            t0 = time.perf_counter()
            m(**prepared[j][i])
            if device.type == "cuda":
                torch.cuda.synchronize(device)
            if i >= warmup or len(prepared[j]) <= warmup:
                times[j].append((time.perf_counter() - t0) * 1000.0)
    return [
        {
            "latency_ms_per_batch": statistics.median(t),
            "latency_ms_mean": statistics.fmean(t),
            "latency_batches": len(t),
            "latency_batch_size": batch_size,
        }
        for t in times
    ]


def evaluate(
    models,
    eval_data,
    *,
    task: Optional[str] = None,
    tokenizer=None,
    batch_size: int = 64,
    max_seq_length: int = 128,
    device: str = "auto",
    latency_batches: int = 0,
    allow_other_task: bool = False,
    n_best: int = 20,
    max_answer_length: int = 30,
    null_score_diff_threshold: float = 0.0,
    predictions_dir: Optional[str] = None,
):
    """Dev metrics and sizes of a model (or a from_pretrained directory), or of a list of them
    (then a list of dicts); inference latency too when latency_batches > 0 (interleaved across models).
    A model whose config records another task than `task` is refused unless allow_other_task=True.
    Question answering: n_best, max_answer_length and null_score_diff_threshold (v2.0) steer the span search;
    predictions_dir receives predictions.json, nbest_predictions.json and (v2.0) null_odds.json, the reference
    scripts' files (one sub-folder per model when several are evaluated)."""
    check_int("batch_size", batch_size, 1)
    check_int("max_seq_length", max_seq_length, 2)
    check_int("latency_batches", latency_batches, 0)
    check_int("n_best", n_best, 1)
    check_int("max_answer_length", max_answer_length, 1)
    single = not isinstance(models, (list, tuple))
    models = [models] if single else list(models)
    spec = get_task(task) if task is not None else None
    dev = resolve_device(device)
    loaded, sets, pads, results = [], [], [], []
    for model in models:
        tok = tokenizer
        if isinstance(model, (str, os.PathLike)):
            model, loaded_tokenizer = load_for_task(model, spec.num_labels if spec else None, require_head=True,
                                                    qa=bool(spec and spec.qa))
            tok = tok if tok is not None else loaded_tokenizer
        num_labels = check_head(model, "model", spec)
        check_task(model, "the model", spec, allow_other_task)
        check_fits(model, "model", max_seq_length, tok)
        model.to(dev)
        if is_qa_model(model):
            ds = prepare_qa(None, eval_data, tokenizer=tok, max_length=max_seq_length)[1]
        else:
            ds = prepare_dataset(eval_data, name="eval_data", tokenizer=tok, max_seq_length=max_seq_length,
                                 num_labels=num_labels)
        pid = pad_id(model, tok)
        spans = dict(n_best=n_best, max_answer_length=max_answer_length, null_threshold=null_score_diff_threshold)
        where = None if predictions_dir is None else (
            predictions_dir if len(models) == 1 else os.path.join(predictions_dir, f"model{len(results)}"))
        result = dict(evaluate_model(model, ds, spec, batch_size, dev, pid, spans=spans, predictions_dir=where))
        result["parameters"] = count_parameters(model)
        result["parameters_without_embeddings"] = count_parameters(model, exclude_embeddings=True)
        loaded.append(model), sets.append(ds), pads.append(pid), results.append(result)
    if latency_batches > 0:
        for result, lat in zip(results, measure_latency(loaded, sets, batch_size, dev, pads, num_batches=latency_batches)):
            result.update(lat)
    return results[0] if single else results


__all__ = ["predict", "evaluate_model", "evaluate", "measure_latency"]
