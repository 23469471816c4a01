"""Two-stage MLKD distillation (METHOD.md), one readable loop.

    batch -> teacher features (frozen, no_grad) and student features (hooks, capture.py)
          -> loss terms (losses.py: the relation terms run on the fused ops)
          -> AdamW step -> lr schedule -> log / checkpoint
Stage 1 trains student + the L_FFN projections on L_EMB + L_MHA + L_FFN at a
constant lr; stage 2 starts from the stage-1 student and trains student + the
L_SC projection on L_SS + L_SC + L_KD with linear decay after 10 % warm-up.
After every epoch the student is evaluated on the dev set; the best dev
checkpoint of the last stage is kept (save_pretrained + tokenizer).
Resume restores model, projections, optimiser, scheduler, RNG and the position
in the (seeded, per-epoch) data order, so a resumed run equals an uninterrupted one.
"""
from __future__ import annotations

import os
from dataclasses import dataclass, field
from typing import Dict, List, Optional, Sequence

import torch
import torch.nn as nn

from mlkd_fast import backends, checkpoint
from mlkd_fast.capture import capture_features, encoder_layers
from mlkd_fast.config import DistillConfig, config_to_dict
from mlkd_fast.data import Collator, batches, epoch_order, get_task, num_batches, prepare_splits
from mlkd_fast.evaluate import evaluate_model, pad_id
from mlkd_fast.layer_map import resolve_layer_map
from mlkd_fast.losses import DistillProjections, LossContext, stage_loss, stage_weights
from mlkd_fast.metrics import main_metric
from mlkd_fast.train_utils import (
    MetricLogger,
    check_classifier,
    constant_schedule,
    linear_schedule,
    make_optimizer,
    progress_bar,
    resolve_device,
    save_json,
    to_device,
)


@dataclass
class DistillResult:
    student_dir: str  # the kept student: AutoModelForSequenceClassification.from_pretrained(student_dir)
    history: List[Dict] = field(default_factory=list)  # one dict per epoch: stage, epoch, mean loss terms, dev metrics
    best_metric: Optional[float] = None  # dev value of `metric` for the kept student (None without eval data)
    metric: Optional[str] = None


def _check_stages(stages) -> tuple:
    try:
        stages = tuple(int(s) for s in stages)
    except (TypeError, ValueError):
        raise TypeError(f"stages must be a sequence of stage numbers like (1, 2), got {stages!r}") from None
    if not stages or any(s not in (1, 2) for s in stages) or list(stages) != sorted(set(stages)):
        raise ValueError(f"stages must be (1,), (2,) or (1, 2), got {stages}")
    return stages


def _load_model(model, name: str):
    if isinstance(model, (str, os.PathLike)):
        from transformers import AutoModelForSequenceClassification

        if not os.path.isdir(model):
            raise ValueError(f"{name} directory {os.fspath(model)!r} does not exist")
        return AutoModelForSequenceClassification.from_pretrained(os.fspath(model))
    return model


def distill(
    teacher,
    student,
    train_data,
    *,
    eval_data=None,
    task: Optional[str] = None,
    config: Optional[DistillConfig] = None,
    output_dir: str,
    stages: Sequence[int] = (1, 2),
    backend: str = "auto",
    resume: bool = False,
    overwrite: bool = False,
    tokenizer=None,
    progress: bool = True,
) -> DistillResult:
    """Distil `teacher` (a task-fine-tuned sequence classifier) into `student` (e.g. from build_student).

    train_data / eval_data: datasets.Dataset, raw text (sentence1[, sentence2], labels; pass tokenizer=)
    or tokenised (input_ids, attention_mask[, token_type_ids], labels).
    """
    # ---- validate everything before anything is written or trained
    cfg = config if config is not None else DistillConfig()
    if not isinstance(cfg, DistillConfig):
        raise TypeError(f"config must be a DistillConfig, got {type(cfg).__name__}")
    cfg.validate()
    stages = _check_stages(stages)
    spec = get_task(task) if task is not None else None
    teacher, student = _load_model(teacher, "teacher"), _load_model(student, "student")
    num_labels = check_classifier(teacher, "teacher", spec.num_labels if spec else None)
    check_classifier(student, "student", num_labels)
    regression = num_labels == 1
    _, t_layers = encoder_layers(teacher)
    _, s_layers = encoder_layers(student)
    layer_map = resolve_layer_map(cfg.layer_map, len(t_layers), len(s_layers))
    dt, ds_ = teacher.config.hidden_size, student.config.hidden_size
    if 1 in stages and cfg.stage1_weights.get("mha", 1.0) != 0:
        for who, width in (("teacher", dt), ("student", ds_)):
            if width % cfg.splits != 0:
                raise ValueError(f"splits={cfg.splits} does not divide the {who}'s hidden size {width} (L_MHA needs equal splits)")
    weights = {s: stage_weights(s, cfg.stage1_weights if s == 1 else cfg.stage2_weights) for s in stages}
    epochs = {1: cfg.stage1_epochs, 2: cfg.stage2_epochs}
    if all(epochs[s] == 0 for s in stages):
        raise ValueError(f"every stage in {stages} has 0 epochs: nothing to train")
    device = resolve_device(cfg.device)
    backend = backends.resolve(backend, device)
    train, dev = prepare_splits(train_data, eval_data, cfg, tokenizer=tokenizer, num_labels=num_labels)
    run_settings = dict(config_to_dict(cfg), stages=list(stages), layer_map=list(layer_map), backend=backend,
                        train_rows=len(train), task=spec.name if spec else None)
    saved = checkpoint.open_run(output_dir, run_settings, resume=resume, overwrite=overwrite, kind="distill")

    # ---- models, projections, data order
    checkpoint.seed_everything(cfg.seed)
    teacher.to(device).eval()
    for p in teacher.parameters():
        p.requires_grad_(False)
    student.to(device).train()
    projections = DistillProjections(ds_, dt, len(s_layers)).to(device)
    collate = Collator(pad_id(teacher, tokenizer), regression=regression)
    metric = main_metric(spec, regression) if dev is not None else None
    final_stage = max(s for s in stages if epochs[s] > 0)
    student_dir = os.path.join(output_dir, "student")
    logger = MetricLogger(os.path.join(output_dir, "metrics.jsonl"), os.path.join(output_dir, "tensorboard"))
    history: List[Dict] = []
    best = None
    pos = {"stage": stages[0], "epoch": 0, "step": 0, "global_step": 0, "sums": {}, "count": 0, "done": False}
    if saved is not None:
        student.load_state_dict(saved["model"])
        projections.load_state_dict(saved["projections"])
        history, best, pos = list(saved["history"]), saved["best"], dict(saved["position"])

    for stage in stages:
        if stage < pos["stage"] or epochs[stage] == 0:
            continue
        # stage 1 learns the hidden-state projections, stage 2 the contrastive one
        trained = [student, projections.hidden if stage == 1 else projections.contrastive]
        optimizer = make_optimizer(trained, cfg.learning_rate, cfg.weight_decay)
        steps_per_epoch = num_batches(len(train), cfg.batch_size)
        if stage == 1:
            scheduler = constant_schedule(optimizer)
        else:
            scheduler = linear_schedule(optimizer, steps_per_epoch * epochs[2], cfg.warmup_proportion)
        resuming = saved is not None and saved["position"]["stage"] == stage and not pos["done"]
        if resuming:
            optimizer.load_state_dict(saved["optimizer"])
            scheduler.load_state_dict(saved["scheduler"])
            checkpoint.set_rng_state(saved["rng"])
        elif pos["stage"] != stage:
            pos = dict(pos, stage=stage, epoch=0, step=0, sums={}, count=0)

        def save_state():
            checkpoint.save_state(output_dir, {
                "kind": "distill", "config": run_settings, "position": dict(pos), "history": history, "best": best,
                "model": student.state_dict(), "projections": projections.state_dict(),
                "optimizer": optimizer.state_dict(), "scheduler": scheduler.state_dict(), "rng": checkpoint.rng_state(),
            })

        for epoch in range(pos["epoch"], epochs[stage]):
            order = epoch_order(len(train), cfg.seed, stage * 100_000 + epoch)
            bar = progress_bar(steps_per_epoch, pos["step"], f"stage {stage} epoch {epoch + 1}/{epochs[stage]}", progress)
            student.train()
            for batch in batches(train, order, cfg.batch_size, collate, start=pos["step"]):
                batch = to_device(batch, device)
                with torch.no_grad():
                    t_feat = capture_features(teacher, batch, mha=stage == 1, token_embeddings=stage == 1)
                s_feat = capture_features(student, batch, mha=stage == 1, token_embeddings=stage == 1)
                ctx = LossContext(
                    mask=batch["attention_mask"].bool(),
                    layer_map=layer_map,
                    projections=projections,
                    labels=None if regression else batch["labels"],
                    is_regression=regression,
                    splits=cfg.splits,
                    sc_temperature=cfg.sc_temperature,
                    sc_base_temperature=cfg.sc_base_temperature,
                    kd_temperature=cfg.kd_temperature,
                    backend=backend,
                )
                loss, terms = stage_loss(weights[stage], t_feat, s_feat, ctx)
                optimizer.zero_grad(set_to_none=True)
                loss.backward()
                if cfg.max_grad_norm > 0:
                    nn.utils.clip_grad_norm_([p for g in optimizer.param_groups for p in g["params"]], cfg.max_grad_norm)
                optimizer.step()
                scheduler.step()

                terms["loss"] = float(loss.detach())
                for k, v in terms.items():
                    pos["sums"][k] = pos["sums"].get(k, 0.0) + v
                pos["count"] += 1
                pos["step"] += 1
                pos["global_step"] += 1
                bar.set_postfix({k: f"{v:.4f}" for k, v in terms.items()})
                bar.update(1)
                logger.log({"kind": "train", "stage": stage, "epoch": epoch + 1, "step": pos["global_step"],
                            "lr": scheduler.get_last_lr()[0], **terms}, step=pos["global_step"])
                if cfg.checkpoint_every and pos["global_step"] % cfg.checkpoint_every == 0:
                    save_state()
            bar.close()

            # ---- end of epoch: dev metrics, history, best checkpoint
            record = {"stage": stage, "epoch": epoch + 1, "steps": pos["count"]}
            record.update({k: v / max(1, pos["count"]) for k, v in pos["sums"].items()})
            if dev is not None:
                record["metrics"] = evaluate_model(student, dev, spec, cfg.eval_batch_size, device, collate.pad_token_id)
            history.append(record)
            logger.log(dict(record, kind="epoch"), step=pos["global_step"])
            if stage == final_stage:
                value = record["metrics"][metric] if dev is not None else None
                if best is None or value is None or value > best["value"]:
                    best = {"value": value, "stage": stage, "epoch": epoch + 1}
                    checkpoint.save_model_atomic(student, student_dir, tokenizer)
            pos.update(epoch=epoch + 1, step=0, sums={}, count=0)
            save_state()
        if stage == 1 and final_stage == 2:
            checkpoint.save_model_atomic(student, os.path.join(output_dir, "stage1"), tokenizer)
        pos.update(stage=stage + 1, epoch=0, step=0, sums={}, count=0)

    pos["done"] = True
    logger.close()
    save_json(os.path.join(output_dir, "history.json"), {"history": history, "best": best, "metric": metric})
    return DistillResult(student_dir=student_dir, history=history, best_metric=best["value"] if best else None, metric=metric)


__all__ = ["distill", "DistillResult"]
