"""One stage of a distillation objective applied to a batch, shared by every trainer path (distill.py,
hf.py): which features each model yields, the loss context, and the weighted sum of the stage's terms.

    batch -> teacher features (no_grad; only when a term reads the teacher) and student features
          -> LossContext -> stage_loss -> (loss, per-term values, student features)
"""
from __future__ import annotations

import os
from typing import Callable, Dict, Optional, Sequence, Tuple

import torch
import torch.nn as nn

from mlkd_fast.data.batching import num_batches
from mlkd_fast.errors import InputError
from mlkd_fast.train.capture import capture_features
from mlkd_fast.train.config import KD_REDUCTION, DistillConfig
from mlkd_fast.train.distributed import SINGLE, Dist
from mlkd_fast.train.encoders import encoder_layout
from mlkd_fast.train.features import Features
from mlkd_fast.train.layer_map import resolve_layer_map
from mlkd_fast.train.loop import Phase
from mlkd_fast.train.objectives import DistillProjections, LossContext, stage_loss, stage_needs
from mlkd_fast.train.optim import constant_schedule, linear_schedule, make_optimizer, optimized_params


def check_objective_fits(teacher, student, cfg: DistillConfig, stages: Sequence[int]) -> Tuple[tuple, int]:
    """The layer map and the minilmv2 teacher layer, after checking that the configured terms fit the two
    models' shapes."""
    t_layers, s_layers = encoder_layout(teacher).layers, encoder_layout(student).layers
    layer_map = resolve_layer_map(cfg.layer_map, len(t_layers), len(s_layers))
    weights = {name: w for stage in stages for name, w in cfg.weights(stage).items() if w != 0}
    if "mha" in weights or "qkv" in weights:
        term = "L_MHA" if "mha" in weights else "the qkv relations"
        for who, model in (("teacher", teacher), ("student", student)):
            width = model.config.hidden_size
            if width % cfg.splits != 0:
                raise InputError(f"splits={cfg.splits} does not divide the {who}'s hidden size {width} ({term} needs equal splits)")
    t_heads, s_heads = teacher.config.num_attention_heads, student.config.num_attention_heads
    if "att" in weights and t_heads != s_heads:
        raise InputError(f"objective {cfg.objective!r}: the attention-score loss compares head h with head h, but the "
                         f"teacher has {t_heads} heads and the student {s_heads}; build the student with {t_heads} "
                         "heads (mlkd and minilmv2 take any head count)")
    minilm_layer = cfg.minilm_teacher_layer or max(1, round(len(t_layers) * 7 / 8))
    if minilm_layer > len(t_layers):
        raise InputError(f"minilm_teacher_layer={minilm_layer} but the teacher has {len(t_layers)} layers")
    return layer_map, minilm_layer


def loss_context(cfg: DistillConfig, projections: DistillProjections, layer_map, minilm_layer: int,
                 regression: bool, backend: str, dist: Dist = SINGLE) -> Dict:
    """The fields of every step's LossContext that do not depend on the batch."""
    return dict(layer_map=layer_map, projections=projections, is_regression=regression, splits=cfg.splits,
                sc_temperature=cfg.sc_temperature, sc_base_temperature=cfg.sc_base_temperature,
                sc_projection=cfg.sc_projection, kd_temperature=cfg.kd_temperature,
                kd_reduction=KD_REDUCTION[cfg.objective], minilm_layer=minilm_layer, backend=backend, dist=dist,
                relations=cfg.relations)


class StageObjective:
    """Stage `stage` of cfg.objective: its weighted terms, and what they need captured."""

    def __init__(self, stage: int, cfg: DistillConfig, context: Dict, cache=None):
        self.stage = stage
        self.cache = cache  # a teacher_cache.TeacherCache: the teacher's features read back, not recomputed
        self.weights = cfg.weights(stage)
        parts, self.uses_teacher = stage_needs(self.weights)
        self.capture = dict(parts, mha_before_dropout=cfg.mha_feature == "before_dropout")
        self.context = context
        self.equal_score_positives = cfg.sc_regression_positives == "equal_scores"

    def trained_projections(self, projections: DistillProjections, cfg: DistillConfig) -> Optional[nn.Module]:
        """The projections this stage trains: stage 1's W_n when L_FFN is on, L_SC's map when L_SC is on."""
        if self.stage == 1:
            return projections.hidden if self.weights.get("ffn", 0) else None
        return projections.sc_map(cfg.sc_projection) if self.weights.get("sc", 0) else None

    def positive_ids(self, labels: Optional[torch.Tensor]) -> Optional[torch.Tensor]:
        """L_SC's positives: class ids; for regression the other view only (None), or with equal-score
        positives (the authors') one id per distinct score. Unlabelled data (None): None."""
        if labels is None or not self.context["is_regression"]:
            return labels
        return torch.unique(labels, return_inverse=True)[1] if self.equal_score_positives else None

    def __call__(self, teacher: nn.Module, student: nn.Module, batch, call: Optional[nn.Module] = None,
                 clock: Optional[Callable[[str], None]] = None) -> Tuple[torch.Tensor, Dict[str, float], Features]:
        """(loss, per-term values, student features) of one batch. `call`: the module that runs the student
        (e.g. its DistributedDataParallel wrapper), when not `student` itself. `clock(phase)`, when given, is
        called as each phase ends ("teacher", "student", "loss"): the whole-recipe benchmark times them."""
        tick = clock or (lambda phase: None)
        t_feat = None
        if self.uses_teacher and self.cache is not None:
            t_feat = self.cache.features(batch["index"], batch["input_ids"].shape[1], batch["input_ids"].device)
        elif self.uses_teacher:
            with torch.no_grad():
                t_feat = capture_features(teacher, batch, **self.capture)
        tick("teacher")
        s_feat = capture_features(student, batch, call=call, **self.capture)
        tick("student")
        mask = batch["attention_mask"].bool()
        shares = self.context["dist"].shares({"token": int(mask.sum()), "sample": mask.shape[0]})
        ctx = LossContext(mask=mask, labels=self.positive_ids(batch.get("labels")), targets=targets(batch),
                          shares=shares, **self.context)
        loss, terms = stage_loss(self.weights, t_feat, s_feat, ctx)
        tick("loss")
        return loss, terms, s_feat


def targets(batch) -> Optional[torch.Tensor]:
    """What hard-label terms compare with: the labels, or the (start, end) answer positions, or None."""
    if "start_positions" in batch:
        return torch.stack([batch["start_positions"], batch["end_positions"]], dim=1)
    return batch.get("labels")


def stage_phase(stage, stages, cfg, teacher, student, projections, context, train_rows, output_dir, cache=None,
                label: Optional[str] = None) -> Phase:
    """Stage 1 or 2 of the objective as a phase of the loop: its terms, what it trains, its optimiser and
    schedule (stage 1 at a constant lr, stage 2 with linear decay after warm-up). The last of `stages` keeps
    the best model; an earlier one saves its model to <output_dir>/stage1 when it ends."""
    objective = StageObjective(stage, cfg, context, cache)

    def step(batch):
        loss, terms, _ = objective(teacher, student, batch)
        return loss, terms

    extra = objective.trained_projections(projections, cfg)
    trained = [student] if extra is None else [student, extra]
    optimizer = make_optimizer(trained, cfg.learning_rate, cfg.weight_decay, cfg.optimizer, cfg.max_grad_norm)
    epochs = cfg.stage1_epochs if stage == 1 else cfg.stage2_epochs
    if stage == 1:
        scheduler = constant_schedule(optimizer)
    else:
        steps = num_batches(train_rows, cfg.batch_size, context["dist"].world, cfg.drop_last) * epochs
        scheduler = linear_schedule(optimizer, steps, cfg.warmup_proportion)
    final = stage == stages[-1]
    return Phase(stage=stage, label=label or f"stage {stage}", epochs=epochs, step=step, optimizer=optimizer,
                 scheduler=scheduler, clip_params=optimized_params(optimizer), keep_best=final,
                 # BertAdam clips each tensor itself: the loop's global norm is then only checked, not clipped
                 max_grad_norm=float("inf") if cfg.optimizer == "bertadam" else None,
                 save_at_end=None if final else os.path.join(output_dir, "stage1"))


__all__ = ["StageObjective", "check_objective_fits", "loss_context", "stage_phase", "targets"]
