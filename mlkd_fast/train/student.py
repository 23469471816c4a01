"""Build a student of the teacher's architecture family (same class, smaller config).

The student may have any number of attention heads that divides its hidden
size: MLKD's L_MHA compares MHA outputs split into A "MHA-splits", independent
of the head counts (docs/method.md). With init="teacher" the student's embeddings,
pooler, classifier and layer n are copied from the teacher (layer n from
teacher layer m(n) of the layer map). That needs the same widths; the head
count may differ, since the Q/K/V/O matrices are the same D x D matrices, only
cut into a different number of heads. Anything that cannot be copied whole is
an error, never a silent partial copy.
"""
from __future__ import annotations

import copy
from typing import Dict, Iterable, Optional, Sequence

import torch
import torch.nn as nn

from mlkd_fast.errors import InputError, InputTypeError
from mlkd_fast.train.encoders import encoder_layout, encoder_paths
from mlkd_fast.train.head_init import HEAD_INITS, prepare_teacher, resolve_head_init, scale_queries
from mlkd_fast.train.layer_map import resolve_layer_map


def _check_positive(name: str, value) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise InputTypeError(f"{name} must be an int, got {type(value).__name__} ({value!r})")
    if value < 1:
        raise InputError(f"{name} must be >= 1, got {value}")
    return value


def build_student(
    teacher: nn.Module,
    num_layers: int,
    hidden_size: Optional[int] = None,
    num_heads: Optional[int] = None,
    intermediate_size: Optional[int] = None,
    init: str = "teacher",
    layer_map: Optional[Sequence[int]] = None,
    head_init: str = "auto",
    sample: Optional[Iterable[Dict[str, torch.Tensor]]] = None,
):
    """A student with `num_layers` layers; unspecified sizes are the teacher's.

    init="teacher": copy embeddings, mapped layers (uniform map unless `layer_map`
    is given, 1-based teacher layers), pooler and classifier; needs hidden_size
    and intermediate_size equal to the teacher's. init="random": fresh weights
    (seed with torch.manual_seed for reproducibility).
    head_init: how copied attention is cut into fewer heads (train/head_init.py): "concat" (as it is),
    "scaled" (each head's logits the mean of its merged teacher heads'), "grouped" (the teacher's heads
    first reordered, in place and function-preserving, so that alike heads merge; needs `sample`, a few
    training batches with input_ids and attention_mask: head_init.sample_batches), "auto" (default):
    "grouped" where it applies (fewer heads, `sample` given, plain Q/K/V attention), else "concat"
    (head_init.resolve_head_init).
    """
    tcfg = getattr(teacher, "config", None)
    if tcfg is None or not hasattr(tcfg, "num_hidden_layers"):
        raise InputTypeError(f"teacher must be a transformers model with a config, got {type(teacher).__name__}")
    num_layers = _check_positive("num_layers", num_layers)
    hidden = tcfg.hidden_size if hidden_size is None else _check_positive("hidden_size", hidden_size)
    ffn_field = encoder_paths(tcfg).ffn_size_field
    t_inter = getattr(tcfg, ffn_field)
    inter = t_inter if intermediate_size is None else _check_positive("intermediate_size", intermediate_size)
    if num_heads is None:
        num_heads = tcfg.num_attention_heads
        if hidden % num_heads != 0:
            raise InputError(
                f"hidden_size {hidden} is not divisible by the teacher's {num_heads} heads: give num_heads explicitly"
            )
    num_heads = _check_positive("num_heads", num_heads)
    if hidden % num_heads != 0:
        raise InputError(f"num_heads={num_heads} does not divide hidden_size={hidden}")
    if init not in ("teacher", "random"):
        raise InputError(f"init must be 'teacher' or 'random', got {init!r}")
    if head_init not in ("auto",) + HEAD_INITS:
        raise InputError(f"head_init must be one of {['auto', *HEAD_INITS]}, got {head_init!r}")
    head_init = resolve_head_init(teacher, head_init, num_heads, init, sample)
    if init == "random" and head_init != "concat":
        raise InputError(f"head_init={head_init!r} re-splits copied teacher attention: it needs init='teacher'")

    cfg = copy.deepcopy(tcfg)
    cfg.num_hidden_layers = num_layers
    if isinstance(getattr(tcfg, "layer_types", None), list):
        # per-layer settings (ModernBERT's local/global attention): student layer n takes teacher layer m(n)'s
        cfg.layer_types = [tcfg.layer_types[m - 1] for m in resolve_layer_map(layer_map, tcfg.num_hidden_layers, num_layers)]
    cfg.hidden_size = hidden
    cfg.num_attention_heads = num_heads
    setattr(cfg, ffn_field, inter)
    # head_dim follows hidden/heads; configs that carry it explicitly must agree
    if hasattr(cfg, "head_dim"):
        cfg.head_dim = hidden // num_heads
    student = type(teacher)(cfg)
    t_base, s_base = getattr(teacher, "base_model", teacher), getattr(student, "base_model", student)
    if getattr(t_base, "pooler", 0) is None and getattr(s_base, "pooler", None) is not None:
        s_base.pooler = None  # a teacher built without its pooler (add_pooling_layer=False): so is the student
    if init == "random":
        return student
    if hidden != tcfg.hidden_size or inter != t_inter:
        raise InputError(
            f"init='teacher' copies teacher weights and needs the teacher's widths: hidden_size {hidden} vs "
            f"{tcfg.hidden_size}, intermediate_size {inter} vs {t_inter}; use init='random' for a "
            "narrower student"
        )
    mapping = resolve_layer_map(layer_map, tcfg.num_hidden_layers, num_layers)
    prepare_teacher(teacher, head_init, num_heads, mapping, sample)  # "grouped": reorders the teacher's heads
    student.load_state_dict(_teacher_weights(teacher, student, mapping), strict=True)
    if head_init != "concat" and num_heads != tcfg.num_attention_heads:
        scale_queries(student, tcfg.num_attention_heads)
    return student


def _teacher_weights(teacher: nn.Module, student: nn.Module, mapping) -> dict:
    """The student's state dict cut from the teacher's: student layer n <- teacher layer mapping[n-1], the rest as is.

    Strict: every student weight must come from the teacher and every copied tensor must fit.
    """
    layer_key = encoder_layout(teacher).layers_prefix
    state = {}
    for key, value in teacher.state_dict().items():
        if key.startswith(layer_key):
            idx, rest = key[len(layer_key) :].split(".", 1)
            for n, m in enumerate(mapping):
                if int(idx) == m - 1:
                    state[f"{layer_key}{n}.{rest}"] = value.clone()
        else:
            state[key] = value.clone()
    s_state = student.state_dict()
    missing = sorted(set(s_state) - set(state))
    unexpected = sorted(set(state) - set(s_state))
    wrong = sorted(k for k in set(state) & set(s_state) if state[k].shape != s_state[k].shape)
    if missing or unexpected or wrong:
        raise InputError(
            f"cannot copy the teacher into the student: missing {missing[:5]}, unexpected {unexpected[:5]}, "
            f"shape mismatch {wrong[:5]}. Where a layer's modules depend on its position (ModernBERT's first layer "
            "has no attention norm), map student layer 1 to teacher layer 1 (layer_map), or use init='random'"
        )
    return state


__all__ = ["build_student"]
