"""Distillation loss terms, registered by name, and the stage objectives as weighted sums.

A term is one `Term` (register_term): its function `fn(teacher: Features, student: Features,
ctx: LossContext, opts) -> 0-dim tensor`, its unit, the features it reads (and so what the teacher cache
stores for it), its own settings (a TermSettings dataclass, set as `term.setting` in DistillConfig.terms or
with the CLI's --set), the projection it trains and its fit check against the two models. Adding a term
with a setting is one block in this file; config, CLI, teacher cache and both trainers read the registry.
MLKD stage 1: "emb" (L_EMB), "mha" (L_MHA), "ffn" (L_FFN); stage 2: "ss" (L_SS), "sc" (L_SC), "kd" (L_KD).
The rivals (config.OBJECTIVES) add "ce" (hard labels), "att" (TinyBERT's attention scores) and
"qkv" (MiniLMv2's self-attention relations); "ffn" doubles as TinyBERT's embedding + hidden-state MSE.
A stage's objective is sum_name weight[name] * term(name).
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field, fields, is_dataclass, replace
from typing import Any, Callable, Dict, List, Mapping, Optional, Sequence, Tuple

import torch
import torch.nn as nn
import torch.nn.functional as F

from mlkd_fast.errors import InputError, InputTypeError
from mlkd_fast.ops import (
    relation_kl,
    sample_contrastive,
    sample_relation_kl,
    soft_cross_entropy,
)
from mlkd_fast.train.capture import split_heads
from mlkd_fast.train.checks import check_float, check_int
from mlkd_fast.train.distributed import SINGLE, Dist
from mlkd_fast.train.features import PARTS, Features

LossFn = Callable[[Features, Features, "LossContext", "TermSettings"], torch.Tensor]
# What each term averages over, so that data parallelism keeps it the global-batch value (distributed.py):
# "token": a mean over the batch's real tokens; "sample": a mean over its samples; "global": computed on the
# [CLS] features gathered from every rank (already the global value on each rank).
UNITS = ("token", "sample", "global")


@dataclass(frozen=True)
class TermSettings:
    """A term's own settings (none here): a term with settings subclasses this with fields that have defaults,
    and checks them in `validate`. Configs name them `term.setting` (DistillConfig.terms, CLI --set)."""

    def validate(self, term: str) -> None:
        """Raise InputError naming `term.field` for a bad value."""


@dataclass(frozen=True)
class RunPlan:
    """What the two models fix for a run, shared by every term's fit check and cached-feature list."""

    layer_map: Tuple[int, ...]  # student layer n (1-based) -> teacher layer layer_map[n-1]
    teacher_layers: int
    splits: int  # A: MHA-splits of L_MHA, relation heads of "qkv"
    qa: bool = False  # question answering: start/end logits instead of class logits


def _no_projection(projections: "DistillProjections", opts: TermSettings) -> Optional[nn.Module]:
    return None


def _fits_anything(teacher: nn.Module, student: nn.Module, opts: TermSettings, plan: RunPlan) -> TermSettings:
    return opts


@dataclass(frozen=True)
class Term:
    """One loss term, everything about it in one place.

    fn(teacher_features, student_features, ctx, opts) -> 0-dim tensor, opts an instance of `settings`.
    unit: what it averages over (UNITS). needs: the optional Features parts it reads (features.PARTS).
    teacher: whether it reads the teacher at all. cached(opts, plan): the teacher-cache feature names it reads
    (teacher_cache.py stores exactly these). trains(projections, opts): the projection it trains, or None.
    fits(teacher, student, opts, plan): checks the two models suit the term (InputError otherwise) and returns
    the settings resolved against them (e.g. a default teacher layer).
    """

    name: str
    fn: LossFn
    unit: str
    needs: Tuple[str, ...] = ()
    teacher: bool = True
    settings: type = TermSettings
    cached: Callable[[TermSettings, RunPlan], List[str]] = lambda opts, plan: []
    trains: Callable[["DistillProjections", TermSettings], Optional[nn.Module]] = _no_projection
    fits: Callable[[nn.Module, nn.Module, TermSettings, RunPlan], TermSettings] = _fits_anything

    def __call__(self, t: Optional[Features], s: Features, ctx: "LossContext",
                 opts: Optional[TermSettings] = None) -> torch.Tensor:
        return self.fn(t, s, ctx, self.settings() if opts is None else opts)

    def make_settings(self, values: Mapping[str, Any]) -> TermSettings:
        """This term's settings from a mapping of overrides, checked (unknown names are an InputError)."""
        if not isinstance(values, Mapping):
            raise InputTypeError(f"terms.{self.name} must be a mapping of setting -> value, got {values!r}")
        known = [f.name for f in fields(self.settings)]
        unknown = sorted(set(values) - set(known))
        if unknown:
            raise InputError(f"{self.name}.{unknown[0]}: not a setting of loss term {self.name!r}; "
                             f"its settings: {known or 'none'}")
        opts = self.settings(**values)
        opts.validate(self.name)
        return opts


TERMS: Dict[str, Term] = {}
LOSSES = TERMS  # the registry by its older name: LOSSES[name](teacher, student, ctx) runs a term


def register_term(name: str, unit: str, needs: Sequence[str] = (), teacher: bool = True,
                  settings: type = TermSettings, cached=None, trains=None, fits=None):
    """Register `fn(teacher_features, student_features, ctx, opts)` as loss term `name` (see Term)."""
    if unit not in UNITS:
        raise InputError(f"unit must be one of {UNITS}, got {unit!r}")
    bad = sorted(set(needs) - set(PARTS))
    if bad:
        raise InputError(f"needs: {bad} are not Features parts {PARTS}")
    if not (isinstance(settings, type) and issubclass(settings, TermSettings) and is_dataclass(settings)):
        raise InputTypeError(f"settings of term {name!r} must be a TermSettings dataclass, got {settings!r}")

    def wrap(fn: LossFn) -> Term:
        if name in TERMS:
            raise InputError(f"loss {name!r} is already registered")
        extra = {k: v for k, v in dict(cached=cached, trains=trains, fits=fits).items() if v is not None}
        TERMS[name] = Term(name, fn, unit, tuple(needs), teacher, settings, **extra)
        return fn

    return wrap


def check_choice(term: str, setting: str, value, allowed: Sequence) -> None:
    if value not in allowed:
        raise InputError(f"{term}.{setting} must be one of {list(allowed)}, got {value!r}")


class DistillProjections(nn.Module):
    """The learnable maps that live beside the student during distillation.

    hidden[n]: W_n, Ds -> Dt for H_n, n = 0..N (L_FFN). init="identity" starts them as the identity when
        Ds == Dt, so L_FFN starts as the plain MSE; init="normal" draws N(0, 0.02) weights, zero bias
        (the authors' code), at any widths.
    contrastive: W, Ds -> Dt for the student's [CLS] in L_SC (unless L_SC reuses W_N: the setting sc.projection="ffn").
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
    """Everything a loss term reads besides the two models' features and its own settings: the batch's mask,
    labels and targets, and what the run fixed (layer map, projections, op backend, ranks)."""

    mask: torch.Tensor  # (B, L) bool, True = real token
    layer_map: Tuple[int, ...]  # student layer n (1-based) -> teacher layer layer_map[n-1]
    projections: DistillProjections
    labels: Optional[torch.Tensor] = None  # (B,) the batch's labels (class ids or scores); None = unlabelled
    targets: Optional[torch.Tensor] = None  # (B,) labels as given (class ids or scores), or (B, 2) answer spans
    is_regression: bool = False
    splits: int = 12  # A: MHA-splits for L_MHA, relation heads for "qkv"
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


class Objective(Dict[int, Dict[str, float]]):
    """An objective: stage -> {loss term: default weight}, and `settings`: term -> {setting: value}, the
    objective's own term settings (over the term's defaults, under a config's `terms`)."""

    def __init__(self, stages: Mapping[int, Mapping[str, float]], settings: Optional[Mapping[str, Mapping]] = None):
        super().__init__({stage: dict(terms) for stage, terms in stages.items()})
        self.settings: Dict[str, Dict[str, Any]] = {k: dict(v) for k, v in (settings or {}).items()}


# The objectives `distill` trains, by name: per stage, each loss term (its registry name in train/objectives.py)
# and its default weight. Stage 1 distils the intermediate layers, stage 2 the prediction layer; one-stage
# objectives run stage 2 only.
# The soft cross-entropy's reduction is the objective's: the authors' MLKD code divides by B * C ("mean"),
# Hinton KD, TinyBERT and MiniLM by B ("batchmean", times T^2).
_HINTON = {"kd": {"reduction": "batchmean"}}
OBJECTIVES: Dict[str, Objective] = {
    # MLKD-BERT (docs/method.md): relation and feature terms, then sample relations and soft labels
    "mlkd": Objective({1: {"emb": 1.0, "mha": 1.0, "ffn": 1.0}, 2: {"ss": 1.0, "sc": 1.0, "kd": 1.0}}),
    # plain fine-tuning of the student on the hard labels (CE; MSE for regression): no teacher
    "ft": Objective({2: {"ce": 1.0}}),
    # Hinton KD: alpha * soft CE at T (times T^2) + (1 - alpha) * hard CE; alpha = 0.5
    "kd": Objective({2: {"kd": 0.5, "ce": 0.5}}, _HINTON),
    # TinyBERT: embedding + hidden-state MSE through learned projections, per-head attention-score MSE; soft CE
    "tinybert": Objective({1: {"ffn": 1.0, "att": 1.0}, 2: {"kd": 1.0}}, _HINTON),
    # MiniLMv2: Q-Q, K-K, V-V relations of one upper teacher layer against the student's last layer; soft CE
    "minilmv2": Objective({1: {"qkv": 1.0}, 2: {"kd": 1.0}}, _HINTON),
}
STAGE_TERMS = {stage: tuple(terms) for stage, terms in OBJECTIVES["mlkd"].items()}

def _acc(x: torch.Tensor) -> torch.Tensor:
    """fp16/bf16 features are compared in fp32; fp32/fp64 stay as they are."""
    return x.float() if x.dtype in (torch.float16, torch.bfloat16) else x


def _split_fit(term: str):
    """A fit check for terms that cut the hidden states into `splits` equal parts."""
    def fits(teacher: nn.Module, student: nn.Module, opts: TermSettings, plan: RunPlan) -> TermSettings:
        for who, model in (("teacher", teacher), ("student", student)):
            width = model.config.hidden_size
            if width % plan.splits != 0:
                raise InputError(f"splits={plan.splits} does not divide the {who}'s hidden size {width} "
                                 f"({term} needs equal splits)")
        return opts
    return fits


@register_term("emb", unit="token", needs=("token_embeddings",), cached=lambda opts, plan: ["tok"])
def embedding_relation_loss(t: Features, s: Features, ctx: LossContext, opts: TermSettings) -> torch.Tensor:
    """L_EMB: token-similarity relation of LayerNorm(word embeddings), one split."""
    return relation_kl(t.token_embeddings, s.token_embeddings, 1, ctx.mask, backend=ctx.backend)


@register_term("mha", unit="token", needs=("mha",), fits=_split_fit("L_MHA"),
               cached=lambda opts, plan: [f"mha{m}" for m in plan.layer_map])
def attention_relation_loss(t: Features, s: Features, ctx: LossContext, opts: TermSettings) -> torch.Tensor:
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


@register_term("ffn", unit="token", trains=lambda projections, opts: projections.hidden,
               cached=lambda opts, plan: ["hid0"] + [f"hid{m}" for m in plan.layer_map])
def hidden_state_loss(t: Features, s: Features, ctx: LossContext, opts: TermSettings) -> torch.Tensor:
    """L_FFN: sum over n = 0..N of MSE(H_s,n W_n, H_t,m(n)), with m(0) = 0."""
    teacher_index = (0,) + tuple(ctx.layer_map)
    total = 0.0
    for n, m in enumerate(teacher_index):
        pred = ctx.projections.hidden[n](s.hidden[n])
        total = total + masked_mse(_acc(pred), _acc(t.hidden[m]), ctx.mask)
    return total


@register_term("ss", unit="global", cached=lambda opts, plan: ["cls"])
def sample_similarity_loss(t: Features, s: Features, ctx: LossContext, opts: TermSettings) -> torch.Tensor:
    """L_SS: relation KL of the B x B [CLS] similarity matrices (student unprojected), over the global batch."""
    return sample_relation_kl(ctx.gather(t.cls), ctx.gather(s.cls), backend=ctx.backend)


@dataclass(frozen=True)
class ContrastiveSettings(TermSettings):
    temperature: float = 0.07  # tau
    base_temperature: float = 1.0  # the loss is scaled by tau / base_temperature (SupCon's convention)
    # the map of the student's [CLS]: a fresh Linear W ("fresh"), or stage 1's W_N of the last layer ("ffn")
    projection: str = "fresh"
    # regression tasks: positives are the other view only ("views"), or samples with equal scores too
    regression_positives: str = "views"

    def validate(self, term: str) -> None:
        check_float(f"{term}.temperature", self.temperature)
        check_float(f"{term}.base_temperature", self.base_temperature)
        check_choice(term, "projection", self.projection, ("fresh", "ffn"))
        check_choice(term, "regression_positives", self.regression_positives, ("views", "equal_scores"))


def positive_ids(labels: Optional[torch.Tensor], is_regression: bool, opts: ContrastiveSettings) -> Optional[torch.Tensor]:
    """L_SC's positives: class ids; for regression the other view only (None), or with equal-score positives
    (the authors') one id per distinct score. Unlabelled data (None): None, each sample's other view."""
    if labels is None or not is_regression:
        return labels
    return torch.unique(labels, return_inverse=True)[1] if opts.regression_positives == "equal_scores" else None


@register_term("sc", unit="global", settings=ContrastiveSettings, cached=lambda opts, plan: ["cls"],
               trains=lambda projections, opts: projections.sc_map(opts.projection))
def sample_contrastive_loss(t: Features, s: Features, ctx: LossContext, opts: ContrastiveSettings) -> torch.Tensor:
    """L_SC: supervised contrastive loss of [W h_s; h_t]; positives = same label (or the other view)."""
    z_s = ctx.gather(ctx.projections.sc_map(opts.projection)(s.cls))
    labels = positive_ids(ctx.labels, ctx.is_regression, opts)
    return sample_contrastive(
        ctx.gather(t.cls),
        z_s,
        None if labels is None else ctx.gather(labels),
        temperature=opts.temperature,
        base_temperature=opts.base_temperature,
        backend=ctx.backend,
    )


@dataclass(frozen=True)
class SoftLabelSettings(TermSettings):
    temperature: float = 1.0  # T
    # "mean": the authors' MLKD code divides the soft cross-entropy by B * C; "batchmean": Hinton's, by B,
    # times T^2 (each objective states its own in config.OBJECTIVES)
    reduction: str = "mean"

    def validate(self, term: str) -> None:
        check_float(f"{term}.temperature", self.temperature)
        check_choice(term, "reduction", self.reduction, ("mean", "batchmean"))


@register_term("kd", unit="sample", settings=SoftLabelSettings,
               cached=lambda opts, plan: ["start", "end"] if plan.qa else ["logits"])
def soft_label_loss(t: Features, s: Features, ctx: LossContext, opts: SoftLabelSettings) -> torch.Tensor:
    """L_KD: soft cross-entropy at temperature T (times T^2 with "batchmean", Hinton's scaling); MSE on the
    logits for regression tasks; for question answering the mean of the start and end distributions'
    soft cross-entropies over each window's real tokens (per window, batchmean)."""
    if s.start_logits is not None:
        pairs = ((t.start_logits, s.start_logits), (t.end_logits, s.end_logits))
        loss = sum(soft_cross_entropy(_masked(tl, ctx.mask), _masked(sl, ctx.mask), temperature=opts.temperature)
                   for tl, sl in pairs) / 2
    elif ctx.is_regression:
        return F.mse_loss(_acc(s.logits).view(-1), _acc(t.logits).view(-1))
    else:
        loss = soft_cross_entropy(t.logits, s.logits, temperature=opts.temperature, reduction=opts.reduction)
    return loss * opts.temperature ** 2 if opts.reduction == "batchmean" else loss


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


@register_term("ce", unit="sample", teacher=False)
def hard_label_loss(t: Optional[Features], s: Features, ctx: LossContext, opts: TermSettings) -> torch.Tensor:
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


def _same_heads(teacher: nn.Module, student: nn.Module, opts: TermSettings, plan: RunPlan) -> TermSettings:
    t_heads, s_heads = teacher.config.num_attention_heads, student.config.num_attention_heads
    if t_heads != s_heads:
        raise InputError(f"the attention-score loss ('att', objective tinybert) compares head h with head h, but "
                         f"the teacher has {t_heads} heads and the student {s_heads}; build the student with "
                         f"{t_heads} heads (mlkd and minilmv2 take any head count)")
    return opts


@register_term("att", unit="token", needs=("qkv",), fits=_same_heads,
               cached=lambda opts, plan: [f"{x}{m}" for m in plan.layer_map for x in "qk"])
def attention_score_loss(t: Features, s: Features, ctx: LossContext, opts: TermSettings) -> torch.Tensor:
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


@dataclass(frozen=True)
class RelationLayerSettings(TermSettings):
    layer: Optional[int] = None  # the teacher layer (1-based); None: round(7/8 M), as 21 of 24 in MiniLMv2

    def validate(self, term: str) -> None:
        if self.layer is not None:
            check_int(f"{term}.layer", self.layer, 1)


def default_relation_layer(teacher_layers: int) -> int:
    """MiniLMv2's teacher layer when qkv.layer is None: round(7/8 M), as 21 of 24."""
    return max(1, round(teacher_layers * 7 / 8))


def _relation_layer_fits(teacher, student, opts: RelationLayerSettings, plan: RunPlan) -> RelationLayerSettings:
    _split_fit("the qkv relations")(teacher, student, opts, plan)
    layer = opts.layer or default_relation_layer(plan.teacher_layers)
    if layer > plan.teacher_layers:
        raise InputError(f"qkv.layer={layer} but the teacher has {plan.teacher_layers} layers")
    return replace(opts, layer=layer)


@register_term("qkv", unit="token", needs=("qkv",), settings=RelationLayerSettings, fits=_relation_layer_fits,
               cached=lambda opts, plan: [f"{x}{opts.layer}" for x in "qkv"])
def self_attention_relation_loss(t: Features, s: Features, ctx: LossContext, opts: RelationLayerSettings) -> torch.Tensor:
    """MiniLMv2: the Q-Q, K-K and V-V relation KLs (ctx.splits relation heads, independent of either model's
    head count) of teacher layer `qkv.layer` against the student's last layer, summed."""
    layer = opts.layer or default_relation_layer(len(t.qkv))
    t_qkv, s_qkv = t.qkv[layer - 1], s.qkv[-1]
    return sum(relation_kl(tx, sx, ctx.splits, ctx.mask, backend=ctx.backend) for tx, sx in zip(t_qkv, s_qkv))


# ----------------------------------------------------------------------------- a stage: weighted terms


def stage_loss(
    weights: Mapping[str, float], teacher: Features, student: Features, ctx: LossContext,
    settings: Optional[Mapping[str, TermSettings]] = None,
) -> Tuple[torch.Tensor, Dict[str, torch.Tensor]]:
    """sum_name weights[name] * TERMS[name], each with its settings (defaults where `settings` has none);
    terms with weight 0 are skipped.

    Returns the total (for backward) and each term's value (for logging) as a detached 0-dim tensor: nothing
    here waits for the device; the loop reads all of a step's values at once (one host sync).
    """
    unknown = sorted(set(weights) - set(TERMS))
    if unknown:
        raise InputError(f"unknown loss term(s) {unknown}; registered: {sorted(TERMS)}")
    settings = settings or {}
    total = None
    values: Dict[str, torch.Tensor] = {}
    for name, w in weights.items():
        if w == 0:
            continue
        spec = TERMS[name]
        term = spec(teacher, student, ctx, settings.get(name))
        unit = spec.unit
        if unit == "global" and ctx.relations == "local":
            unit = "sample"  # each rank's relation over its own shard, averaged over ranks
        share = ctx.shares.get(unit, 1.0)
        if share != 1.0:  # data parallel: this rank's part of the global mean
            term = term * share
        values[name] = term.detach()
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


def active(weights: Mapping[str, float]) -> List[str]:
    return [name for name, w in weights.items() if w != 0]


def stage_needs(weights: Mapping[str, float]) -> Tuple[Dict[str, bool], bool]:
    """What the terms with non-zero weight read: the Features parts to capture, and whether the teacher runs."""
    names = active(weights)
    parts = {part: any(part in TERMS[name].needs for name in names) for part in PARTS}
    return parts, any(TERMS[name].teacher for name in names)


def cached_features(weights: Mapping[str, float], settings: Mapping[str, TermSettings], plan: RunPlan) -> List[str]:
    """The teacher-cache feature names the terms with non-zero weight read (each term says which)."""
    return sorted({f for name in active(weights) for f in TERMS[name].cached(settings[name], plan)})


def trained_projections(weights: Mapping[str, float], settings: Mapping[str, TermSettings],
                        projections: DistillProjections) -> List[nn.Module]:
    """The projections the terms with non-zero weight train, each once."""
    found: Dict[int, nn.Module] = {}
    for name in active(weights):
        module = TERMS[name].trains(projections, settings[name])
        if module is not None:
            found.setdefault(id(module), module)
    return list(found.values())


def term_settings(objective: str, overrides: Mapping[str, Mapping[str, Any]]) -> Dict[str, TermSettings]:
    """Every term's settings for `objective`: the term's defaults, then the objective's own (OBJECTIVES), then
    `overrides` (term -> {setting: value}), checked."""
    unknown = sorted(set(overrides) - set(TERMS))
    if unknown:
        raise InputError(f"terms: {unknown[0]!r} is not a loss term; registered: {sorted(TERMS)}")
    for name, given in overrides.items():
        if not isinstance(given, Mapping):
            raise InputTypeError(f"terms.{name} must be a mapping of setting -> value, got {given!r}")
    own = OBJECTIVES[objective].settings
    return {name: spec.make_settings({**own.get(name, {}), **overrides.get(name, {})}) for name, spec in TERMS.items()}


def fit_terms(teacher: nn.Module, student: nn.Module, weights: Mapping[str, float],
              settings: Mapping[str, TermSettings], plan: RunPlan) -> Dict[str, TermSettings]:
    """Each active term's fit check against the two models; the settings resolved against them."""
    resolved = dict(settings)
    for name in active(weights):
        resolved[name] = TERMS[name].fits(teacher, student, settings[name], plan)
    return resolved


def token_embedding_relation_input(word_embeddings: nn.Embedding, layer_norm: nn.LayerNorm, input_ids: torch.Tensor) -> torch.Tensor:
    """E = LayerNorm(word_embeddings(input_ids)): token embeddings alone, no position/segment terms."""
    return layer_norm(word_embeddings(input_ids))


__all__: Sequence[str] = [
    "TERMS",
    "LOSSES",
    "OBJECTIVES",
    "Objective",
    "STAGE_TERMS",
    "DistillProjections",
    "LossContext",
    "RunPlan",
    "Term",
    "TermSettings",
    "register_term",
    "stage_loss",
    "stage_weights",
    "stage_needs",
    "term_settings",
    "fit_terms",
    "cached_features",
    "trained_projections",
    "masked_mse",
    "supervised_loss",
    "token_embedding_relation_input",
]
