"""Where distillation finds its features in each encoder family: one adapter (module paths) per layout.

Capture (capture.py) needs, per model:
  the word embeddings and the LayerNorm that L_EMB applies to them alone;
  the Transformer layers (a ModuleList, also what build_student copies);
  per layer, W^O: the attention output projection, whose *input* is the concatenated heads' context
  (the MHA output O_n of L_MHA), read by a forward pre-hook;
  per layer, the query/key/value projections (three Linears, or one fused Linear whose output is
  [Q; K; V]), read by forward hooks (TinyBERT's attention scores, MiniLMv2's relations);
and the [CLS]-equivalent token: position 0 of the last hidden state in every family here.
Hidden states come from `output_hidden_states=True` (the embedding output, then each layer).

A model_type not registered is tried with the BERT paths; a path that is not there is an error naming it
and saying how to register an adapter (`register_encoder`).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Dict, List, Sequence, Tuple

import torch.nn as nn

from mlkd_fast.errors import InputError, InputTypeError


@dataclass(frozen=True)
class EncoderPaths:
    """Module paths of one encoder family: the first three relative to `model.base_model`, the others
    relative to each layer. `qkv` is (query, key, value) or (fused,) for one [Q; K; V] Linear.
    `plain_attention`: the layer's attention is softmax(Q K^T / sqrt(d) + mask) V, so the context can be
    recomputed from Q, K, V (mha_feature="before_dropout"); false for relative-position or rotary attention."""

    word_embeddings: str
    embedding_norm: str
    layers: str
    attention_output: str
    qkv: Tuple[str, ...]
    plain_attention: bool = True
    ffn_size_field: str = "intermediate_size"  # the config field of the feed-forward width


_BERT = EncoderPaths("embeddings.word_embeddings", "embeddings.LayerNorm", "encoder.layer", "attention.output.dense",
                     ("attention.self.query", "attention.self.key", "attention.self.value"))
ENCODERS: Dict[str, EncoderPaths] = {
    "bert": _BERT,
    "roberta": _BERT,
    "xlm-roberta": _BERT,
    "camembert": _BERT,
    "electra": _BERT,
    "distilbert": EncoderPaths("embeddings.word_embeddings", "embeddings.LayerNorm", "transformer.layer",
                               "attention.out_lin", ("attention.q_lin", "attention.k_lin", "attention.v_lin"),
                               ffn_size_field="hidden_dim"),
    # DeBERTa-v2/v3: disentangled relative-position attention; W^O's input is still the heads' context
    "deberta-v2": EncoderPaths("embeddings.word_embeddings", "embeddings.LayerNorm", "encoder.layer",
                               "attention.output.dense",
                               ("attention.self.query_proj", "attention.self.key_proj", "attention.self.value_proj"),
                               plain_attention=False),
    # ModernBERT: fused Wqkv (Q and K before the rotary embedding), Wo after the heads' context
    "modernbert": EncoderPaths("embeddings.tok_embeddings", "embeddings.norm", "layers", "attn.Wo", ("attn.Wqkv",),
                               plain_attention=False),
}


def register_encoder(model_type: str, paths: EncoderPaths) -> None:
    """Teach capture a new encoder family (config.model_type -> its module paths)."""
    if not isinstance(paths, EncoderPaths):
        raise InputTypeError(f"paths must be an EncoderPaths, got {type(paths).__name__}")
    ENCODERS[model_type] = paths


@dataclass
class EncoderLayout:
    """The modules of one model that capture and student building use."""

    paths: EncoderPaths
    word_embeddings: nn.Embedding
    embedding_norm: nn.Module
    layers: List[nn.Module]
    layers_prefix: str  # state-dict prefix of the layers, e.g. "bert.encoder.layer."
    attention_output: List[nn.Linear]
    qkv: List[Tuple[nn.Linear, ...]]
    heads: int


def _get(root: nn.Module, path: str, where: str, model_type: str) -> nn.Module:
    module = root
    for part in path.split("."):
        module = getattr(module, part, None)
        if module is None:
            raise InputTypeError(
                f"{type(root).__name__} ({model_type!r}): module {where}.{path} not found, so the features "
                f"distillation needs cannot be captured. Register the family's layout: "
                f"mlkd_fast.register_encoder({model_type!r}, EncoderPaths(word_embeddings=..., embedding_norm=..., "
                f"layers=..., attention_output=..., qkv=(...))); known families: {sorted(ENCODERS)}"
            )
    return module


def encoder_paths(config) -> EncoderPaths:
    """The registered paths of config.model_type (the BERT paths for a type not registered)."""
    return ENCODERS.get(getattr(config, "model_type", None), _BERT)


def encoder_layout(model: nn.Module) -> EncoderLayout:
    """The layout of `model` (a transformers encoder, with or without a task head), or a clear error."""
    config = getattr(model, "config", None)
    model_type = getattr(config, "model_type", None)
    if model_type is None:
        raise InputTypeError(f"{type(model).__name__} is not a transformers model (no config.model_type)")
    paths = encoder_paths(config)
    base = getattr(model, "base_model", model)
    word = _get(base, paths.word_embeddings, "base_model", model_type)
    norm = _get(base, paths.embedding_norm, "base_model", model_type)
    layers = _get(base, paths.layers, "base_model", model_type)
    if not isinstance(layers, nn.ModuleList):
        raise InputTypeError(f"{type(model).__name__}: base_model.{paths.layers} is not a ModuleList of layers")
    out, qkv = [], []
    for i, layer in enumerate(layers):
        where = f"base_model.{paths.layers}[{i}]"
        out.append(_linear(_get(layer, paths.attention_output, where, model_type), where, paths.attention_output))
        qkv.append(tuple(_linear(_get(layer, p, where, model_type), where, p) for p in paths.qkv))
    prefix = next(name for name, module in model.named_modules() if module is layers) + "."
    return EncoderLayout(paths, word, norm, list(layers), prefix, out, qkv, int(config.num_attention_heads))


def _linear(module: nn.Module, where: str, path: str) -> nn.Linear:
    if not isinstance(module, nn.Linear):
        raise InputTypeError(f"{where}.{path} is a {type(module).__name__}, not the nn.Linear capture hooks")
    return module


def split_qkv(outputs: Sequence, heads_dim: int) -> Tuple:
    """(query, key, value) from the hooked outputs: three tensors, or one fused [Q; K; V] split in three."""
    if len(outputs) == 3:
        return tuple(outputs)
    if len(outputs) == 1 and outputs[0].shape[-1] == 3 * heads_dim:
        return tuple(outputs[0].chunk(3, dim=-1))
    raise InputError(f"expected 3 projections or one fused [Q; K; V] of width {3 * heads_dim}, got "
                     f"{[tuple(o.shape) for o in outputs]}")


__all__ = ["EncoderPaths", "EncoderLayout", "ENCODERS", "register_encoder", "encoder_paths", "encoder_layout", "split_qkv"]
