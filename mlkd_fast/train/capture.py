"""Capture the features MLKD needs from a BERT-layout encoder with forward hooks.

No transformers code is edited, and the capture works with every attention
implementation (eager, sdpa, flash): the multi-head attention output O_n (the
concatenated heads' softmax(QK^T/sqrt(d))V) is the *input* of
`encoder.layer[n].attention.output.dense`, which all implementations pass
through, so a forward pre-hook on that Linear reads it. The token embeddings
of L_EMB are LayerNorm(word_embeddings(input_ids)) computed with the model's
own modules (gradients reach the student's embedding weights). Hidden states
come from `output_hidden_states=True`. Encoders with the same module layout
(BERT, RoBERTa, ELECTRA, ...) work through `model.base_model`.
"""
from __future__ import annotations

from typing import Dict, List, Optional

import torch
import torch.nn as nn
import torch.nn.functional as F

from mlkd_fast.errors import InputTypeError
from mlkd_fast.train.features import Features


def encoder_layers(model: nn.Module):
    """(embeddings module, list of Transformer layers) of a BERT-layout model, or a clear error."""
    base = getattr(model, "base_model", model)
    emb = getattr(base, "embeddings", None)
    enc = getattr(base, "encoder", None)
    layers = getattr(enc, "layer", None)
    if emb is None or layers is None or not hasattr(emb, "word_embeddings") or not hasattr(emb, "LayerNorm"):
        raise InputTypeError(
            f"{type(model).__name__} does not have the BERT module layout "
            "(base_model.embeddings.{word_embeddings,LayerNorm}, base_model.encoder.layer[i]) that MLKD capture needs"
        )
    for i, layer in enumerate(layers):
        dense = getattr(getattr(getattr(layer, "attention", None), "output", None), "dense", None)
        if not isinstance(dense, nn.Linear):
            raise InputTypeError(f"{type(model).__name__}: encoder.layer[{i}] has no attention.output.dense Linear")
    return emb, list(layers)


def capture_features(
    model: nn.Module,
    batch: Dict[str, torch.Tensor],
    *,
    mha: bool = True,
    token_embeddings: bool = True,
    qkv: bool = False,
    mha_before_dropout: bool = False,
) -> Features:
    """Run `model` on `batch` once and return its Features.

    mha / token_embeddings / qkv: which optional parts to capture (stage 2 needs none of them).
    mha_before_dropout: O_n recomputed from the layer's Q, K, V with the attention probabilities before
    dropout (the authors' feature), instead of the W^O input; the same in eval mode, where dropout is off.
    Gradients flow as usual: wrap the call in torch.no_grad() for the teacher.
    """
    emb, layers = encoder_layers(model)
    want_qkv = qkv or (mha and mha_before_dropout)
    grabbed_mha: List[Optional[torch.Tensor]] = [None] * len(layers)
    grabbed_qkv: List[List[Optional[torch.Tensor]]] = [[None, None, None] for _ in layers]
    handles = []
    for i, layer in enumerate(layers):
        if mha and not mha_before_dropout:
            handles.append(layer.attention.output.dense.register_forward_pre_hook(_keep_input(grabbed_mha, i)))
        if want_qkv:
            for j, proj in enumerate(_qkv_modules(model, i, layer)):
                handles.append(proj.register_forward_hook(_keep_output(grabbed_qkv[i], j)))
    inputs = {k: batch[k] for k in ("input_ids", "attention_mask", "token_type_ids") if k in batch}
    try:
        out = model(**inputs, output_hidden_states=True, return_dict=True)
    finally:
        for h in handles:
            h.remove()
    hidden = list(out.hidden_states)
    if len(hidden) != len(layers) + 1:
        raise RuntimeError(f"expected {len(layers) + 1} hidden states (embeddings + each layer), got {len(hidden)}")
    heads = int(model.config.num_attention_heads)
    if want_qkv and any(x is None for trio in grabbed_qkv for x in trio):
        raise RuntimeError("a query/key/value hook did not fire: the model does not run its layers as expected")
    if mha and mha_before_dropout:
        mask = batch["attention_mask"].bool()
        grabbed_mha = [attention_context(q, k, v, mask, heads) for q, k, v in grabbed_qkv]
    elif mha and any(c is None for c in grabbed_mha):
        raise RuntimeError("an attention.output.dense pre-hook did not fire: the model does not run its layers as expected")
    tok = emb.LayerNorm(emb.word_embeddings(batch["input_ids"])) if token_embeddings else None
    return Features(token_embeddings=tok, mha=list(grabbed_mha) if mha else [],
                    qkv=[tuple(t) for t in grabbed_qkv] if qkv else [], hidden=hidden, logits=out.logits, heads=heads)


def _keep_input(store: list, i: int):
    def hook(module, args):
        store[i] = args[0]
    return hook


def _keep_output(store: list, i: int):
    def hook(module, args, output):
        store[i] = output
    return hook


def _qkv_modules(model: nn.Module, i: int, layer: nn.Module):
    attn = getattr(getattr(layer, "attention", None), "self", None)
    mods = [getattr(attn, name, None) for name in ("query", "key", "value")]
    if not all(isinstance(m, nn.Linear) for m in mods):
        raise InputTypeError(f"{type(model).__name__}: encoder.layer[{i}].attention.self has no query/key/value Linears "
                             "(needed by the qkv features and by mha_before_dropout)")
    return mods


def split_heads(x: torch.Tensor, heads: int) -> torch.Tensor:
    """(B, L, D) -> (B, heads, L, D / heads)."""
    B, L, D = x.shape
    return x.view(B, L, heads, D // heads).transpose(1, 2)


def attention_context(q, k, v, mask: torch.Tensor, heads: int) -> torch.Tensor:
    """concat_h softmax(Q_h K_h^T / sqrt(d) + padding mask) V_h, (B, L, D): a layer's attention output
    before W^O, with no dropout on the probabilities."""
    keep = mask[:, None, None, :]  # (B, 1, 1, L): padded keys left out
    ctx = F.scaled_dot_product_attention(split_heads(q, heads), split_heads(k, heads), split_heads(v, heads),
                                         attn_mask=keep)
    return ctx.transpose(1, 2).reshape(q.shape)


__all__ = ["capture_features", "encoder_layers", "attention_context", "split_heads"]
