"""Training configurations (dataclasses) and loading them from YAML/JSON files.

Defaults follow the authors' recipe (docs/method.md, "Recipe"): AdamW lr 5e-5,
weight decay 0.01, batch 32, seed 42, stage 1 at a constant lr, stage 2 with
linear decay after 10 % warm-up, max length 128, A = 12 MHA-splits.
Every field is checked in `validate()`, so a bad value fails before training.
"""
from __future__ import annotations

import dataclasses
import json
import os
from dataclasses import dataclass, field
from typing import Any, Dict, Mapping, Optional, Tuple

from mlkd_fast.errors import InputError, InputTypeError
from mlkd_fast.train.checks import check_float, check_int
from mlkd_fast.train.objectives import OBJECTIVES, STAGE_TERMS, Objective, term_settings

# DistillConfig fields of earlier versions that are term settings now (DistillConfig.terms): a config file or
# mapping that still uses one is read as the term setting, so old files keep their meaning.
RENAMED_FIELDS: Dict[str, Tuple[str, str]] = {
    "kd_temperature": ("kd", "temperature"),
    "sc_temperature": ("sc", "temperature"),
    "sc_base_temperature": ("sc", "base_temperature"),
    "sc_projection": ("sc", "projection"),
    "sc_regression_positives": ("sc", "regression_positives"),
    "minilm_teacher_layer": ("qkv", "layer"),
}

# Named presets of DistillConfig fields. "authors": the authors' released code where it differs from this
# library's defaults (README, "Deviations"); a config's own fields override its preset's.
RECIPES: Dict[str, Dict[str, Any]] = {
    "mlkd_fast": {},
    "authors": {
        # L_SC reuses the stage-1 projection W_N of the last layer; STS-B: samples with the same score are positives
        "terms": {"sc": {"projection": "ffn", "regression_positives": "equal_scores"}},
        "teacher_mode": "train",  # the teacher is never put in eval mode: dropout on
        "mha_feature": "before_dropout",  # the heads' context from the attention probabilities before dropout
        "optimizer": "bertadam",  # per-tensor clipping at 1, no bias correction
        "projection_init": "normal",  # N(0, 0.02) weights, zero bias
        "drop_last": True,  # L_SS and L_SC always see a full batch
    },
}


def setting(default: Any, help: str, *, choices=None):
    """A config field with the help text (and allowed values) that its CLI flag is generated from
    (cli.add_config_flags): the field is the one place of the setting's default, meaning and choices."""
    return field(default=default, metadata={"help": help, **({"choices": choices} if choices is not None else {})})


@dataclass
class TrainingConfig:
    """Fields shared by fine-tuning and distillation."""

    batch_size: int = setting(32, "training batch (the global batch under torchrun)")
    eval_batch_size: int = setting(64, "dev evaluation batch")
    learning_rate: float = setting(5e-5, "peak learning rate")
    weight_decay: float = setting(0.01, "AdamW weight decay (not on biases and LayerNorm)")
    max_grad_norm: float = setting(1.0, "gradient clipping (global norm; per tensor under bertadam)")
    max_seq_length: int = setting(128, "tokens per sequence, longer ones cut")
    seed: int = setting(42, "data order, new weights, dropout")
    max_train_samples: Optional[int] = setting(None, "train on a seeded random subset of this many rows")
    checkpoint_every: int = setting(0, "optimizer steps between resumable checkpoints (0 = per epoch)")
    device: str = setting("auto", "auto (cuda when available, else cpu), cpu, cuda, cuda:N")
    precision: str = setting("fp32", "fp32, or bf16 / fp16 autocast (fp16 with gradient scaling)",
                             choices=("fp32", "bf16", "fp16"))
    # each rank's shard of the global batch is cut into this many pieces, run one after another, their gradients
    # averaged (batch relations then span one micro-batch on all ranks)
    grad_accum_steps: int = setting(1, "micro-batches per optimiser step")
    # the authors evaluate every 10 (RTE), 20 (CoLA, MRPC, STS-B), 100 (SST-2), 500 (the rest) steps
    eval_every: int = setting(0, "optimiser steps between dev evaluations of the last stage (0 = once per epoch)")
    drop_last: bool = setting(False, "drop each epoch's final partial batch (the authors' loader does)")
    max_steps: int = setting(0, "stop after this many optimiser steps in all (0: every epoch runs)")
    report_to: str = setting("none", "where scalars go beside metrics.jsonl, the log of record",
                             choices=("none", "tensorboard"))

    def validate(self) -> None:
        for f in dataclasses.fields(self):  # the choices stated with the fields
            allowed = f.metadata.get("choices")
            if allowed is not None and getattr(self, f.name) not in allowed:
                raise InputError(f"{f.name} must be one of {list(allowed)}, got {getattr(self, f.name)!r}")
        check_int("batch_size", self.batch_size, 1)
        check_int("eval_batch_size", self.eval_batch_size, 1)
        check_float("learning_rate", self.learning_rate)
        check_float("weight_decay", self.weight_decay, strict=False)
        check_float("max_grad_norm", self.max_grad_norm, strict=False)
        check_int("max_seq_length", self.max_seq_length, 2)
        check_int("seed", self.seed, 0)
        if self.max_train_samples is not None:
            check_int("max_train_samples", self.max_train_samples, 1)
        check_int("checkpoint_every", self.checkpoint_every, 0)
        check_int("grad_accum_steps", self.grad_accum_steps, 1)
        check_int("eval_every", self.eval_every, 0)
        check_int("max_steps", self.max_steps, 0)
        if not isinstance(self.drop_last, bool):
            raise InputTypeError(f"drop_last must be true or false, got {self.drop_last!r}")
        if self.batch_size % self.grad_accum_steps:
            raise InputError(f"batch_size={self.batch_size} must be divisible by grad_accum_steps={self.grad_accum_steps}")
        if not isinstance(self.device, str) or not self.device:
            raise InputTypeError(f"device must be a device string like 'auto', 'cpu' or 'cuda', got {self.device!r}")


@dataclass
class FinetuneConfig(TrainingConfig):
    """Task fine-tuning of the teacher: cross-entropy (MSE for regression), linear decay with warm-up."""

    epochs: int = setting(3, "passes over the training set")
    learning_rate: float = setting(2e-5, "peak learning rate")
    warmup_proportion: float = setting(0.1, "share of the steps with a rising learning rate")

    def validate(self) -> None:
        super().validate()
        check_int("epochs", self.epochs, 1)
        check_float("warmup_proportion", self.warmup_proportion, strict=False)
        if self.warmup_proportion >= 1:
            raise InputError(f"warmup_proportion must be in [0, 1), got {self.warmup_proportion}")


@dataclass
class DistillConfig(TrainingConfig):
    """Two-stage MLKD distillation (docs/method.md), or one of the rival objectives (OBJECTIVES)."""

    objective: str = setting("mlkd", "mlkd or a rival: ft, kd, tinybert, minilmv2", choices=OBJECTIVES.keys())
    # informational once loaded: a recipe's fields are applied by config_from_dict
    recipe: str = setting("mlkd_fast", "a preset of the recipe choices below (RECIPES): mlkd_fast or authors",
                          choices=RECIPES.keys())
    stage1_epochs: int = setting(20, "epochs of stage 1 (intermediate layers)")
    stage2_epochs: int = setting(15, "epochs of stage 2 (prediction layer)")
    warmup_proportion: float = setting(0.1, "stage 2's share of steps with a rising lr (stage 1: constant lr)")
    splits: int = setting(12, "MHA-splits A of L_MHA (and the relation heads of minilmv2)")
    # None = uniform (teacher layers must be a multiple of the student's); the CLI's --layer-map is a student flag
    layer_map: Optional[Tuple[int, ...]] = None
    # weight overrides per stage (term -> weight); terms left out keep the objective's default weight
    stage1_weights: Dict[str, float] = field(default_factory=dict)
    stage2_weights: Dict[str, float] = field(default_factory=dict)
    # the loss terms' own settings over the objective's: term -> {setting: value}, e.g. {"kd": {"temperature":
    # 2.0}}; each term states its settings and defaults (train/objectives.py: kd.temperature, kd.reduction,
    # sc.temperature, sc.base_temperature, sc.projection, sc.regression_positives, qkv.layer); CLI: --set
    terms: Dict[str, Dict[str, Any]] = field(default_factory=dict)
    # "global" is the same as one process on the global batch; "local" is what other toolkits do
    relations: str = setting("global", "data parallel: L_SS/L_SC over the global batch or each rank's shard",
                             choices=("global", "local"))
    # recipe choices where the authors' code differs (RECIPES["authors"] has their values, with sc's settings)
    teacher_mode: str = setting("eval", "recipe choice: 'train' runs the teacher with dropout (no gradients "
                                "either way)", choices=("eval", "train"))
    mha_feature: str = setting("output", "recipe choice: L_MHA's O_n is the W^O input ('output') or recomputed "
                               "without attention dropout", choices=("output", "before_dropout"))
    optimizer: str = setting("adamw", "recipe choice: adamw (global-norm clipping) or bertadam (per-tensor "
                             "clipping, no bias correction)", choices=("adamw", "bertadam"))
    projection_init: str = setting("identity", "recipe choice: projections of equal widths start as identity "
                                   "maps, or N(0, 0.02) weights", choices=("identity", "normal"))
    # train/teacher_cache.py: computed once per (teacher weights, training data, feature set)
    teacher_cache: Optional[str] = setting(None, "folder for teacher-output caches: the teacher's features are "
                                           "computed once and read back by later epochs, stages, seeds, objectives")
    teacher_cache_dtype: str = setting("fp32", "cache storage: fp32, or fp16 (half the disk; features rounded)",
                                       choices=("fp32", "fp16"))
    teacher_cache_max_gb: Optional[float] = setting(None, "refuse to build a cache larger than this")

    def validate(self) -> None:
        super().validate()
        check_int("stage1_epochs", self.stage1_epochs, 0)
        check_int("stage2_epochs", self.stage2_epochs, 0)
        check_float("warmup_proportion", self.warmup_proportion, strict=False)
        if self.warmup_proportion >= 1:
            raise InputError(f"warmup_proportion must be in [0, 1), got {self.warmup_proportion}")
        check_int("splits", self.splits, 1)
        self.term_settings()  # each term checks its own settings
        if self.layer_map is not None:
            if isinstance(self.layer_map, (str, bytes)) or not hasattr(self.layer_map, "__iter__"):
                raise InputTypeError(f"layer_map must be a sequence of teacher layer numbers or None, got {self.layer_map!r}")
            self.layer_map = tuple(self.layer_map)
        for stage in (1, 2):
            weights = getattr(self, f"stage{stage}_weights")
            if not isinstance(weights, Mapping):
                raise InputTypeError(f"stage{stage}_weights must be a mapping of loss name -> weight, got {weights!r}")
            terms = tuple(OBJECTIVES[self.objective].get(stage, {}))
            for name, w in weights.items():
                if name not in terms:
                    raise InputError(f"stage{stage}_weights: {name!r} is not a stage-{stage} term of objective "
                                     f"{self.objective!r} {terms}")
                check_float(f"stage{stage}_weights[{name!r}]", w, strict=False)
        if self.teacher_cache is not None:
            if not isinstance(self.teacher_cache, (str, os.PathLike)):
                raise InputTypeError(f"teacher_cache must be a folder path or None, got {self.teacher_cache!r}")
            if os.path.exists(self.teacher_cache) and not os.path.isdir(self.teacher_cache):
                raise InputError(f"teacher_cache {os.fspath(self.teacher_cache)!r} is a file: give a folder (made if missing)")
            if self.teacher_cache_max_gb is not None:
                check_float("teacher_cache_max_gb", self.teacher_cache_max_gb)
            if self.teacher_mode == "train":
                raise InputError("teacher_cache cannot be used with teacher_mode='train': a teacher with dropout on "
                                 "gives other features at every step, so cached ones would not be exact")

    def weights(self, stage: int) -> Dict[str, float]:
        """The objective's terms of `stage` with their weights (defaults, then this config's overrides)."""
        overrides = self.stage1_weights if stage == 1 else self.stage2_weights
        return {name: float(overrides.get(name, w)) for name, w in OBJECTIVES[self.objective].get(stage, {}).items()}

    def term_settings(self) -> Dict[str, Any]:
        """Every loss term's settings (objectives.TermSettings): defaults, the objective's, then `terms`."""
        if not isinstance(self.terms, Mapping):
            raise InputTypeError(f"terms must be a mapping of loss term -> {{setting: value}}, got {self.terms!r}")
        return term_settings(self.objective, self.terms)

    @property
    def objective_stages(self) -> Tuple[int, ...]:
        return tuple(sorted(OBJECTIVES[self.objective]))


def config_from_dict(cls, values: Mapping[str, Any], source: str = "config"):
    """Build `cls` from a mapping, rejecting unknown keys (a typo must not be ignored silently)."""
    if not isinstance(values, Mapping):
        raise InputTypeError(f"{source} must be a mapping of field -> value, got {type(values).__name__}")
    names = {f.name for f in dataclasses.fields(cls)}
    if "terms" in names:
        values = renamed_to_terms(values)
    unknown = sorted(set(values) - names)
    if unknown:
        raise InputError(f"{source}: unknown {cls.__name__} field(s) {unknown}; known fields: {sorted(names)}")
    values = dict(values)
    if "recipe" in values:  # the preset first, the mapping's own fields over it
        if values["recipe"] not in RECIPES:
            raise InputError(f"{source}: recipe must be one of {list(RECIPES)}, got {values['recipe']!r}")
        preset = RECIPES[values["recipe"]]
        values = {**preset, **values, "terms": merge_terms(preset.get("terms", {}), values.get("terms", {}))}
    cfg = cls(**values)
    cfg.validate()
    return cfg


def merge_terms(base: Mapping[str, Mapping], over: Mapping[str, Mapping]) -> Dict[str, Dict[str, Any]]:
    """Term settings `over` on top of `base`, setting by setting."""
    if not isinstance(over, Mapping):
        raise InputTypeError(f"terms must be a mapping of loss term -> {{setting: value}}, got {over!r}")
    merged = {term: dict(settings) for term, settings in base.items()}
    for term, settings in over.items():
        if not isinstance(settings, Mapping):
            raise InputTypeError(f"terms.{term} must be a mapping of setting -> value, got {settings!r}")
        merged.setdefault(term, {}).update(settings)
    return merged


def renamed_to_terms(values: Mapping[str, Any]) -> Dict[str, Any]:
    """A mapping with the earlier flat fields (RENAMED_FIELDS) moved into `terms`."""
    values = dict(values)
    moved: Dict[str, Dict[str, Any]] = {}
    for old, (term, setting) in RENAMED_FIELDS.items():
        if old in values:
            moved.setdefault(term, {})[setting] = values.pop(old)
    if moved:
        values["terms"] = merge_terms(moved, values.get("terms") or {})
    return values


def load_config_file(path: str) -> Dict[str, Any]:
    """Read a YAML (.yaml/.yml) or JSON (.json) file holding a mapping."""
    if not os.path.isfile(path):
        raise InputError(f"config file {path!r} does not exist")
    ext = os.path.splitext(path)[1].lower()
    with open(path, encoding="utf-8") as f:
        text = f.read()
    try:
        if ext in (".yaml", ".yml"):
            import yaml

            data = yaml.safe_load(text)
        elif ext == ".json":
            data = json.loads(text)
        else:
            raise InputError(f"config file {path!r} must end in .yaml, .yml or .json")
    except (json.JSONDecodeError, ImportError) as e:
        raise InputError(f"config file {path!r} could not be parsed: {e}") from e
    except Exception as e:  # yaml.YAMLError and friends
        if isinstance(e, ValueError):
            raise
        raise InputError(f"config file {path!r} could not be parsed: {e}") from e
    if data is None:
        data = {}
    if not isinstance(data, dict):
        raise InputError(f"config file {path!r} must hold a mapping at the top level, got {type(data).__name__}")
    return data


def config_to_dict(cfg) -> Dict[str, Any]:
    d = dataclasses.asdict(cfg)
    if d.get("layer_map") is not None:
        d["layer_map"] = list(d["layer_map"])
    return d


__all__ = ["STAGE_TERMS", "OBJECTIVES", "Objective", "RENAMED_FIELDS", "merge_terms", "RECIPES", "setting", "TrainingConfig", "FinetuneConfig", "DistillConfig", "config_from_dict", "load_config_file", "config_to_dict"]
