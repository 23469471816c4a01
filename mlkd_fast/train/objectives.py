"""MLKD loss terms, registered by name, and the stage objectives as weighted sums.

Every term is `fn(teacher: Features, student: Features, ctx: LossContext) -> 0-dim tensor`.
Stage 1: "emb" (L_EMB), "mha" (L_MHA), "ffn" (L_FFN).
Stage 2: "ss" (L_SS), "sc" (L_SC), "kd" (L_KD).
A stage's objective is sum_name weight[name] * term(name); weights and
temperatures are explicit fields of the context/config, never hidden defaults.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable, Dict, Mapping, Optional, Sequence, Tuple

import torch
import torch.nn as nn
import torch.nn.functional as F

from mlkd_fast.errors import InputError
from mlkd_fast.ops import (
    relation_kl,
    sample_contrastive,
    sample_relation_kl,
    soft_cross_entropy,
)
from mlkd_fast.train.config import STAGE_TERMS
from mlkd_fast.train.distributed import SINGLE, Dist
from mlkd_fast.train.features import Features

LossFn = Callable[[Features, Features, "LossContext"], torch.Tensor]
LOSSES: Dict[str, LossFn] = {}
# What each term averages over, so that data parallelism keeps it the global-batch value (distributed.py):
# "token": a mean over the batch's real tokens; "sample": a mean over its samples; "global": computed on the
# [CLS] features gathered from every rank (already the global value on each rank).
UNITS = ("token", "sample", "global")
LOSS_UNITS: Dict[str, str] = {}


def register_loss(name: str, unit: str):
    if unit not in UNITS:
        raise InputError(f"unit must be one of {UNITS}, got {unit!r}")

    def wrap(fn: LossFn) -> LossFn:
        if name in LOSSES:
            raise InputError(f"loss {name!r} is already registered")
        LOSSES[name] = fn
        LOSS_UNITS[name] = unit
        return fn

    return wrap


class DistillProjections(nn.Module):
    """The learnable maps that live beside the student during distillation.

    hidden[n]: W_n, Ds -> Dt for H_n, n = 0..N (L_FFN). Initialised to the
        identity when Ds == Dt so L_FFN starts as the plain MSE.
    contrastive: W, Ds -> Dt for the student's [CLS] in L_SC.
    """

    def __init__(self, student_hidden: int, teacher_hidden: int, student_layers: int):
        super().__init__()
        self.hidden = nn.ModuleList(nn.Linear(student_hidden, teacher_hidden) for _ in range(student_layers + 1))
        self.contrastive = nn.Linear(student_hidden, teacher_hidden)
        if student_hidden == teacher_hidden:
            for lin in list(self.hidden) + [self.contrastive]:
                nn.init.eye_(lin.weight)
                nn.init.zeros_(lin.bias)


@dataclass
class LossContext:
    """Everything a loss term needs besides the two models' features."""

    mask: torch.Tensor  # (B, L) bool, True = real token
    layer_map: Tuple[int, ...]  # student layer n (1-based) -> teacher layer layer_map[n-1]
    projections: DistillProjections
    labels: Optional[torch.Tensor] = None  # (B,) class ids; None for regression
    is_regression: bool = False
    splits: int = 12  # A: MHA-splits for L_MHA
    sc_temperature: float = 0.07
    sc_base_temperature: float = 1.0
    kd_temperature: float = 1.0
    kd_reduction: str = "mean"  # the authors' `.mean()` over batch and classes
    backend: str = "auto"
    dist: Dist = SINGLE  # the ranks of a data-parallel run (identities on one process)
    relations: str = "global"  # data parallel: sample relations over the global batch, or "local" per rank
    shares: Dict[str, float] = field(default_factory=dict)  # unit -> this rank's share (distributed.Dist.share)

    gathered: Dict[tuple, tuple] = field(default_factory=dict, repr=False)  # per step: L_SS and L_SC share h_t

    def gather(self, x: torch.Tensor) -> torch.Tensor:
        """Rows of every rank (the global batch) for the "global" terms; x itself on one process or with local
        relations. A feature used by several terms (the teacher's [CLS], a fresh view each time) is gathered
        once per step: keyed by its memory and layout, and held so that no other tensor can take that memory."""
        if self.relations == "local" or not self.dist.enabled:
            return x
        key = (x.data_ptr(), tuple(x.shape), x.stride(), x.dtype, x.requires_grad)
        if key not in self.gathered:
            self.gathered[key] = (x, self.dist.gather_rows(x))
        return self.gathered[key][1]


def _acc(x: torch.Tensor) -> torch.Tensor:
    """fp16/bf16 features are compared in fp32; fp32/fp64 stay as they are."""
    return x.float() if x.dtype in (torch.float16, torch.bfloat16) else x


@register_loss("emb", unit="token")
def embedding_relation_loss(t: Features, s: Features, ctx: LossContext) -> torch.Tensor:
    """L_EMB: token-similarity relation of LayerNorm(word embeddings), one split."""
    return relation_kl(t.token_embeddings, s.token_embeddings, 1, ctx.mask, backend=ctx.backend)


@register_loss("mha", unit="token")
def attention_relation_loss(t: Features, s: Features, ctx: LossContext) -> torch.Tensor:
    """L_MHA: sum over student layers of the relation KL of MHA outputs over A splits."""
    total = 0.0
    for n, m in enumerate(ctx.layer_map, start=1):
        total = total + relation_kl(t.mha[m - 1], s.mha[n - 1], ctx.splits, ctx.mask, backend=ctx.backend)
    return total


def masked_mse(pred: torch.Tensor, target: torch.Tensor, mask: Optional[torch.Tensor]) -> torch.Tensor:
    """Mean squared error over the real tokens only (the authors' code also averages over padding)."""
    if mask is None:
        return F.mse_loss(pred, target)
    w = mask.to(pred.dtype)[..., None]
    n = w.sum() * pred.shape[-1]
    return ((pred - target) ** 2 * w).sum() / n.clamp_min(1.0)


@register_loss("ffn", unit="token")
def hidden_state_loss(t: Features, s: Features, ctx: LossContext) -> torch.Tensor:
    """L_FFN: sum over n = 0..N of MSE(H_s,n W_n, H_t,m(n)), with m(0) = 0."""
    teacher_index = (0,) + tuple(ctx.layer_map)
    total = 0.0
    for n, m in enumerate(teacher_index):
        pred = ctx.projections.hidden[n](s.hidden[n])
        total = total + masked_mse(_acc(pred), _acc(t.hidden[m]), ctx.mask)
    return total


@register_loss("ss", unit="global")
def sample_similarity_loss(t: Features, s: Features, ctx: LossContext) -> torch.Tensor:
    """L_SS: relation KL of the B x B [CLS] similarity matrices (student unprojected), over the global batch."""
    return sample_relation_kl(ctx.gather(t.cls), ctx.gather(s.cls), backend=ctx.backend)


@register_loss("sc", unit="global")
def sample_contrastive_loss(t: Features, s: Features, ctx: LossContext) -> torch.Tensor:
    """L_SC: supervised contrastive loss of [W h_s; h_t]; positives = same label (or the other view)."""
    z_s = ctx.gather(ctx.projections.contrastive(s.cls))
    labels = None if ctx.is_regression else ctx.gather(ctx.labels)
    return sample_contrastive(
        ctx.gather(t.cls),
        z_s,
        labels,
        temperature=ctx.sc_temperature,
        base_temperature=ctx.sc_base_temperature,
        backend=ctx.backend,
    )


@register_loss("kd", unit="sample")
def soft_label_loss(t: Features, s: Features, ctx: LossContext) -> torch.Tensor:
    """L_KD: soft cross-entropy at temperature T; MSE on the logits for regression tasks."""
    if ctx.is_regression:
        return F.mse_loss(_acc(s.logits).view(-1), _acc(t.logits).view(-1))
    return soft_cross_entropy(t.logits, s.logits, temperature=ctx.kd_temperature, reduction=ctx.kd_reduction)


def stage_loss(
    weights: Mapping[str, float], teacher: Features, student: Features, ctx: LossContext
) -> Tuple[torch.Tensor, Dict[str, float]]:
    """sum_name weights[name] * LOSSES[name]; terms with weight 0 are skipped.

    Returns the total (for backward) and each term's value (for logging).
    """
    unknown = sorted(set(weights) - set(LOSSES))
    if unknown:
        raise InputError(f"unknown loss term(s) {unknown}; registered: {sorted(LOSSES)}")
    total = None
    values: Dict[str, float] = {}
    for name, w in weights.items():
        if w == 0:
            continue
        term = LOSSES[name](teacher, student, ctx)
        unit = LOSS_UNITS[name]
        if unit == "global" and ctx.relations == "local":
            unit = "sample"  # each rank's relation over its own shard, averaged over ranks
        share = ctx.shares.get(unit, 1.0)
        if share != 1.0:  # data parallel: this rank's part of the global mean
            term = term * share
        values[name] = float(term.detach())
        total = w * term if total is None else total + w * term
    if total is None:
        raise InputError("every loss weight is 0: nothing to optimise")
    return total, values


def stage_weights(stage: int, overrides: Optional[Mapping[str, float]] = None) -> Dict[str, float]:
    """The default (all 1) weights of a stage's terms, with overrides applied."""
    if stage not in STAGE_TERMS:
        raise InputError(f"stage must be 1 or 2, got {stage}")
    weights = {name: 1.0 for name in STAGE_TERMS[stage]}
    for name, w in (overrides or {}).items():
        if name not in weights:
            raise InputError(f"loss {name!r} is not a stage-{stage} term; stage {stage} has {STAGE_TERMS[stage]}")
        weights[name] = float(w)
    return weights


def token_embedding_relation_input(word_embeddings: nn.Embedding, layer_norm: nn.LayerNorm, input_ids: torch.Tensor) -> torch.Tensor:
    """E = LayerNorm(word_embeddings(input_ids)): token embeddings alone, no position/segment terms."""
    return layer_norm(word_embeddings(input_ids))


__all__: Sequence[str] = [
    "LOSSES",
    "LOSS_UNITS",
    "STAGE_TERMS",
    "DistillProjections",
    "LossContext",
    "register_loss",
    "stage_loss",
    "stage_weights",
    "masked_mse",
    "token_embedding_relation_input",
]
