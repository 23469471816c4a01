"""One stage of a distillation objective applied to a batch, shared by every trainer path (distill.py,
hf.py): which features each model yields, the loss context, and the weighted sum of the stage's terms.

    batch -> teacher features (no_grad; only when a term reads the teacher) and student features
          -> LossContext -> stage_loss -> (loss, per-term values, student features)
"""
from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Callable, Dict, List, Optional, Sequence, Tuple

import torch
import torch.nn as nn

from mlkd_fast.data.batching import num_batches
from mlkd_fast.errors import InputTypeError
from mlkd_fast.train.capture import capture_features
from mlkd_fast.train.config import DistillConfig
from mlkd_fast.train.distributed import SINGLE, Dist
from mlkd_fast.train.encoders import encoder_layout
from mlkd_fast.train.features import Features
from mlkd_fast.train.layer_map import resolve_layer_map
from mlkd_fast.train.loop import Phase
from mlkd_fast.train.objectives import (DistillProjections, LossContext, RunPlan, TermSettings, fit_terms, stage_loss,
                                        stage_needs, trained_projections)
from mlkd_fast.train.optim import constant_schedule, linear_schedule, make_optimizer, optimized_params


def checked_config(config: Optional[DistillConfig], default: Optional[DistillConfig] = None, name: str = "config"
                   ) -> DistillConfig:
    """The run's DistillConfig (the default when None), validated."""
    cfg = config if config is not None else (default if default is not None else DistillConfig())
    if not isinstance(cfg, DistillConfig):
        raise InputTypeError(f"{name} must be a DistillConfig, got {type(cfg).__name__}")
    cfg.validate()
    return cfg


@dataclass
class DistillSetup:
    """What every distillation path (distill, general_distill, MLKDTrainer) builds the same way once the two
    models are checked: the plan and resolved term settings, the projections beside the student, and the
    batch-independent part of every step's LossContext."""

    plan: RunPlan
    term_settings: Dict[str, TermSettings]
    projections: DistillProjections
    context: Dict

    @classmethod
    def build(cls, teacher: nn.Module, student: nn.Module, cfg: DistillConfig, plan: RunPlan,
              term_settings: Dict[str, TermSettings], device, backend: str, regression: bool,
              dist: Dist = SINGLE) -> "DistillSetup":
        """Moves the teacher to `device`, frozen (in train mode only with teacher_mode="train", as the authors'
        code runs it), and makes the projections there; call after seeding (projection_init="normal"). The
        student's placement is its trainer's business."""
        teacher.to(device).train(cfg.teacher_mode == "train").requires_grad_(False)
        projections = DistillProjections(student.config.hidden_size, teacher.config.hidden_size,
                                         len(plan.layer_map), init=cfg.projection_init).to(device)
        context = loss_context(cfg, projections, plan, regression, backend, dist)
        return cls(plan, term_settings, projections, context)

    def phases(self, stages: Sequence[int], cfg: DistillConfig, teacher, student, train_rows: int, output_dir: str,
               cache=None, label: Optional[str] = None) -> List[Phase]:
        return [stage_phase(s, stages, cfg, teacher, student, self.projections, self.context, self.term_settings,
                            train_rows, output_dir, cache, label) for s in stages]


def plan_terms(teacher, student, cfg: DistillConfig, stages: Sequence[int], qa: bool = False
               ) -> Tuple[RunPlan, Dict[str, TermSettings]]:
    """The run's plan (layer map, ...) and every term's settings resolved against the two models, after each
    configured term has checked that it fits them."""
    t_layers, s_layers = encoder_layout(teacher).layers, encoder_layout(student).layers
    plan = RunPlan(layer_map=resolve_layer_map(cfg.layer_map, len(t_layers), len(s_layers)),
                   teacher_layers=len(t_layers), splits=cfg.splits, qa=qa)
    weights = {name: w for stage in stages for name, w in cfg.weights(stage).items()}
    return plan, fit_terms(teacher, student, weights, cfg.term_settings(), plan)


def loss_context(cfg: DistillConfig, projections: DistillProjections, plan: RunPlan, regression: bool,
                 backend: str, dist: Dist = SINGLE) -> Dict:
    """The fields of every step's LossContext that do not depend on the batch."""
    return dict(layer_map=plan.layer_map, projections=projections, is_regression=regression, splits=plan.splits,
                backend=backend, dist=dist, relations=cfg.relations)


class StageObjective:
    """Stage `stage` of cfg.objective: its weighted terms with their settings, and what they need captured."""

    def __init__(self, stage: int, cfg: DistillConfig, context: Dict, settings: Dict[str, TermSettings], cache=None):
        self.stage = stage
        self.cache = cache  # a teacher_cache.TeacherCache: the teacher's features read back, not recomputed
        self.weights = cfg.weights(stage)
        self.settings = settings
        parts, self.uses_teacher = stage_needs(self.weights)
        self.capture = dict(parts, mha_before_dropout=cfg.mha_feature == "before_dropout")
        self.context = context

    def trained_projections(self, projections: DistillProjections) -> List[nn.Module]:
        """The projections this stage's terms train (stage 1's W_n for L_FFN, L_SC's map for L_SC)."""
        return trained_projections(self.weights, self.settings, projections)

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
        ctx = LossContext(mask=mask, labels=batch.get("labels"), targets=targets(batch), shares=shares,
                          **self.context)
        loss, terms = stage_loss(self.weights, t_feat, s_feat, ctx, self.settings)
        tick("loss")
        return loss, terms, s_feat


def targets(batch) -> Optional[torch.Tensor]:
    """What hard-label terms compare with: the labels, or the (start, end) answer positions, or None."""
    if "start_positions" in batch:
        return torch.stack([batch["start_positions"], batch["end_positions"]], dim=1)
    return batch.get("labels")


def stage_phase(stage, stages, cfg, teacher, student, projections, context, settings, train_rows, output_dir,
                cache=None, label: Optional[str] = None) -> Phase:
    """Stage 1 or 2 of the objective as a phase of the loop: its terms, what it trains, its optimiser and
    schedule (stage 1 at a constant lr, stage 2 with linear decay after warm-up). The last of `stages` keeps
    the best model; an earlier one saves its model to <output_dir>/stage1 when it ends."""
    objective = StageObjective(stage, cfg, context, settings, cache)

    def step(batch):
        loss, terms, _ = objective(teacher, student, batch)
        return loss, terms

    trained = [student] + objective.trained_projections(projections)
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


__all__ = ["DistillSetup", "StageObjective", "checked_config", "plan_terms", "loss_context", "stage_phase", "targets"]
