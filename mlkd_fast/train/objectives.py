"""Distillation loss terms, registered by name, and the stage objectives as weighted sums.

Every term is `fn(teacher: Features, student: Features, ctx: LossContext) -> 0-dim tensor`.
MLKD stage 1: "emb" (L_EMB), "mha" (L_MHA), "ffn" (L_FFN); stage 2: "ss" (L_SS), "sc" (L_SC), "kd" (L_KD).
The rivals (config.OBJECTIVES) add "ce" (hard labels), "att" (TinyBERT's attention scores) and
"qkv" (MiniLMv2's self-attention relations); "ffn" doubles as TinyBERT's embedding + hidden-state MSE.
A stage's objective is sum_name weight[name] * term(name); weights and
temperatures are explicit fields of the context/config, never hidden defaults.
"""
from __future__ import annotations

import math
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
from mlkd_fast.train.capture import split_heads
from mlkd_fast.train.config import OBJECTIVES, STAGE_TERMS
from mlkd_fast.train.distributed import SINGLE, Dist
from mlkd_fast.train.features import PARTS, Features

LossFn = Callable[[Features, Features, "LossContext"], torch.Tensor]
LOSSES: Dict[str, LossFn] = {}
# What each term averages over, so that data parallelism keeps it the global-batch value (distributed.py):
# "token": a mean over the batch's real tokens; "sample": a mean over its samples; "global": computed on the
# [CLS] features gathered from every rank (already the global value on each rank).
UNITS = ("token", "sample", "global")
LOSS_UNITS: Dict[str, str] = {}
# What each term reads: the optional Features parts (features.PARTS) and whether it needs the teacher at all
LOSS_NEEDS: Dict[str, Tuple[str, ...]] = {}
LOSS_USES_TEACHER: Dict[str, bool] = {}


def register_loss(name: str, unit: str, needs: Sequence[str] = (), teacher: bool = True):
    """Register `fn(teacher_features, student_features, ctx)` as loss term `name` (see the module doc)."""
    if unit not in UNITS:
        raise InputError(f"unit must be one of {UNITS}, got {unit!r}")
    bad = sorted(set(needs) - set(PARTS))
    if bad:
        raise InputError(f"needs: {bad} are not Features parts {PARTS}")

    def wrap(fn: LossFn) -> LossFn:
        if name in LOSSES:
            raise InputError(f"loss {name!r} is already registered")
        LOSSES[name] = fn
        LOSS_UNITS[name] = unit
        LOSS_NEEDS[name] = tuple(needs)
        LOSS_USES_TEACHER[name] = teacher
        return fn

    return wrap


class DistillProjections(nn.Module):
    """The learnable maps that live beside the student during distillation.

    hidden[n]: W_n, Ds -> Dt for H_n, n = 0..N (L_FFN). init="identity" starts them as the identity when
        Ds == Dt, so L_FFN starts as the plain MSE; init="normal" draws N(0, 0.02) weights, zero bias
        (the authors' code), at any widths.
    contrastive: W, Ds -> Dt for the student's [CLS] in L_SC (unless L_SC reuses W_N: sc_projection="ffn").
    """

    def __init__(self, student_hidden: int, teacher_hidden: int, student_layers: int, init: str = "identity"):
        super().__init__()
        if init not in ("identity", "normal"):
            raise InputError(f"init must be 'identity' or 'normal', got {init!r}")
        self.hidden = nn.ModuleList(nn.Linear(student_hidden, teacher_hidden) for _ in range(student_layers + 1))
        self.contrastive = nn.Linear(student_hidden, teacher_hidden)
        for lin in list(self.hidden) + [self.contrastive]:
            if init == "normal":
                nn.init.normal_(lin.weight, std=0.02)
                nn.init.zeros_(lin.bias)
            elif student_hidden == teacher_hidden:
                nn.init.eye_(lin.weight)
                nn.init.zeros_(lin.bias)

    def sc_map(self, source: str) -> nn.Linear:
        """L_SC's projection of the student's [CLS]: the fresh one, or stage 1's W_N ("ffn")."""
        return self.hidden[-1] if source == "ffn" else self.contrastive


@dataclass
class LossContext:
    """Everything a loss term needs besides the two models' features."""

    mask: torch.Tensor  # (B, L) bool, True = real token
    layer_map: Tuple[int, ...]  # student layer n (1-based) -> teacher layer layer_map[n-1]
    projections: DistillProjections
    labels: Optional[torch.Tensor] = None  # (B,) L_SC's positive ids (class ids, or equal-score ids); None = views
    targets: Optional[torch.Tensor] = None  # (B,) labels as given (class ids or scores), or (B, 2) answer spans
    is_regression: bool = False
    splits: int = 12  # A: MHA-splits for L_MHA, relation heads for "qkv"
    sc_temperature: float = 0.07
    sc_base_temperature: float = 1.0
    sc_projection: str = "fresh"  # DistillProjections.sc_map
    kd_temperature: float = 1.0
    kd_reduction: str = "mean"  # the authors' `.mean()` over batch and classes; "batchmean" adds Hinton's T^2
    minilm_layer: int = 0  # "qkv": the teacher layer (1-based) whose relations the student's last layer learns
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


@register_loss("emb", unit="token", needs=("token_embeddings",))
def embedding_relation_loss(t: Features, s: Features, ctx: LossContext) -> torch.Tensor:
    """L_EMB: token-similarity relation of LayerNorm(word embeddings), one split."""
    return relation_kl(t.token_embeddings, s.token_embeddings, 1, ctx.mask, backend=ctx.backend)


@register_loss("mha", unit="token", needs=("mha",))
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
    z_s = ctx.gather(ctx.projections.sc_map(ctx.sc_projection)(s.cls))
    labels = None if ctx.labels is None else ctx.gather(ctx.labels)
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
    """L_KD: soft cross-entropy at temperature T (times T^2 with "batchmean", Hinton's scaling); MSE on the
    logits for regression tasks; for question answering the mean of the start and end distributions'
    soft cross-entropies over each window's real tokens (per window, batchmean)."""
    if s.start_logits is not None:
        pairs = ((t.start_logits, s.start_logits), (t.end_logits, s.end_logits))
        loss = sum(soft_cross_entropy(_masked(tl, ctx.mask), _masked(sl, ctx.mask), temperature=ctx.kd_temperature)
                   for tl, sl in pairs) / 2
    elif ctx.is_regression:
        return F.mse_loss(_acc(s.logits).view(-1), _acc(t.logits).view(-1))
    else:
        loss = soft_cross_entropy(t.logits, s.logits, temperature=ctx.kd_temperature, reduction=ctx.kd_reduction)
    return loss * ctx.kd_temperature ** 2 if ctx.kd_reduction == "batchmean" else loss


def _masked(logits: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Per-token logits with padding pushed out of the softmax."""
    return _acc(logits).masked_fill(~mask, -1e4)


def supervised_loss(s: Features, targets: torch.Tensor, is_regression: bool) -> torch.Tensor:
    """The task's own loss: cross-entropy on class ids, MSE on scores, or for question answering the mean of
    the start and end cross-entropies (targets (B, 2): start and end token positions)."""
    if s.start_logits is not None:
        return (F.cross_entropy(_acc(s.start_logits), targets[:, 0]) + F.cross_entropy(_acc(s.end_logits), targets[:, 1])) / 2
    if is_regression:
        return F.mse_loss(_acc(s.logits).view(-1), targets.to(_acc(s.logits).dtype).view(-1))
    return F.cross_entropy(_acc(s.logits), targets)


@register_loss("ce", unit="sample", teacher=False)
def hard_label_loss(t: Optional[Features], s: Features, ctx: LossContext) -> torch.Tensor:
    """Hard labels (supervised_loss). Reads no teacher."""
    return supervised_loss(s, ctx.targets, ctx.is_regression)


def masked_score_mse(t_q, t_k, s_q, s_k, heads: int, mask: torch.Tensor) -> torch.Tensor:
    """Mean over heads and real (query, key) pairs of the squared difference of the attention scores
    Q_h K_h^T / sqrt(d_h) (before softmax) of teacher and student."""
    def scores(q, k):
        q, k = split_heads(_acc(q), heads), split_heads(_acc(k), heads)
        return q @ k.transpose(-1, -2) / math.sqrt(q.shape[-1])

    pairs = (mask[:, None, :, None] & mask[:, None, None, :]).to(scores(t_q, t_k).dtype)
    diff = (scores(s_q, s_k) - scores(t_q, t_k)) ** 2 * pairs
    return diff.sum() / (pairs.sum() * heads).clamp_min(1.0)


@register_loss("att", unit="token", needs=("qkv",))
def attention_score_loss(t: Features, s: Features, ctx: LossContext) -> torch.Tensor:
    """TinyBERT's attention loss: sum over student layers of the per-head MSE of the attention scores of
    layer n and teacher layer m(n) (padding left out). Head h is compared with head h: equal head counts."""
    if t.heads != s.heads:
        raise InputError(f"the attention-score loss ('att', objective tinybert) compares head h with head h: the "
                         f"teacher has {t.heads} heads, the student {s.heads}; give the student {t.heads} heads "
                         "or use an objective without it (mlkd compares MHA-splits at any head count)")
    total = 0.0
    for n, m in enumerate(ctx.layer_map, start=1):
        (tq, tk, _), (sq, sk, _) = t.qkv[m - 1], s.qkv[n - 1]
        total = total + masked_score_mse(tq, tk, sq, sk, t.heads, ctx.mask)
    return total


@register_loss("qkv", unit="token", needs=("qkv",))
def self_attention_relation_loss(t: Features, s: Features, ctx: LossContext) -> torch.Tensor:
    """MiniLMv2: the Q-Q, K-K and V-V relation KLs (ctx.splits relation heads, independent of either model's
    head count) of teacher layer ctx.minilm_layer against the student's last layer, summed."""
    t_qkv, s_qkv = t.qkv[ctx.minilm_layer - 1], s.qkv[-1]
    return sum(relation_kl(tx, sx, ctx.splits, ctx.mask, backend=ctx.backend) for tx, sx in zip(t_qkv, s_qkv))


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


def stage_weights(stage: int, overrides: Optional[Mapping[str, float]] = None, objective: str = "mlkd") -> Dict[str, float]:
    """The default weights of an objective's stage terms (OBJECTIVES), with overrides applied."""
    if objective not in OBJECTIVES:
        raise InputError(f"objective must be one of {list(OBJECTIVES)}, got {objective!r}")
    if stage not in OBJECTIVES[objective]:
        raise InputError(f"stage must be one of {sorted(OBJECTIVES[objective])} for objective {objective!r}, got {stage}")
    weights = dict(OBJECTIVES[objective][stage])
    for name, w in (overrides or {}).items():
        if name not in weights:
            raise InputError(f"loss {name!r} is not a stage-{stage} term; stage {stage} has {tuple(weights)}")
        weights[name] = float(w)
    return weights


def stage_needs(weights: Mapping[str, float]) -> Tuple[Dict[str, bool], bool]:
    """What the terms with non-zero weight read: the Features parts to capture, and whether the teacher runs."""
    active = [name for name, w in weights.items() if w != 0]
    parts = {part: any(part in LOSS_NEEDS[name] for name in active) for part in PARTS}
    return parts, any(LOSS_USES_TEACHER[name] for name in active)


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
    "stage_needs",
    "LOSS_NEEDS",
    "LOSS_USES_TEACHER",
    "masked_mse",
    "supervised_loss",
    "token_embedding_relation_input",
]
