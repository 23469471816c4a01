"""Capture the features distillation needs from an encoder with forward hooks (layouts: encoders.py).

No transformers code is edited, and the capture works with every attention
implementation (eager, sdpa, flash): the multi-head attention output O_n (the
concatenated heads' context) is the *input* of the layer's attention output
projection W^O, which all implementations pass through, so a forward pre-hook
on that Linear reads it. Q, K and V are the outputs of their projections. The
token embeddings of L_EMB are the embedding LayerNorm applied to the word
embeddings alone, computed with the model's own modules (gradients reach the
student's embedding weights). Hidden states come from `output_hidden_states=True`.
"""
from __future__ import annotations

from typing import Dict, List, Optional

import torch
import torch.nn as nn
import torch.nn.functional as F

from mlkd_fast.errors import InputError
from mlkd_fast.train.encoders import encoder_layout, split_qkv
from mlkd_fast.train.features import Features
from mlkd_fast.train.models import model_inputs


def capture_features(
    model: nn.Module,
    batch: Dict[str, torch.Tensor],
    *,
    mha: bool = True,
    token_embeddings: bool = True,
    qkv: bool = False,
    mha_before_dropout: bool = False,
    call: Optional[nn.Module] = None,
) -> Features:
    """Run `model` on `batch` once and return its Features.

    mha / token_embeddings / qkv: which optional parts to capture (stage 2 needs none of them).
    mha_before_dropout: O_n recomputed from the layer's Q, K, V with the attention probabilities before
    dropout (the authors' feature), instead of the W^O input; the same in eval mode, where dropout is off.
    call: the module to run instead of `model` itself, e.g. its DistributedDataParallel wrapper (the hooks
    go on `model`'s modules either way).
    Gradients flow as usual: wrap the call in torch.no_grad() for the teacher.
    """
    layout = encoder_layout(model)
    want_qkv = qkv or (mha and mha_before_dropout)
    if mha and mha_before_dropout and not layout.paths.plain_attention:
        raise InputError(f"mha_feature='before_dropout' recomputes softmax(QK^T/sqrt(d))V, which is not how "
                         f"{model.config.model_type!r} attends (relative-position or rotary attention); use "
                         "mha_feature='output'")
    n = len(layout.layers)
    grabbed_mha: List[Optional[torch.Tensor]] = [None] * n
    grabbed_qkv: List[List[Optional[torch.Tensor]]] = [[None] * len(layout.paths.qkv) for _ in range(n)]
    handles = []
    for i in range(n):
        if mha and not mha_before_dropout:
            handles.append(layout.attention_output[i].register_forward_pre_hook(_keep_input(grabbed_mha, i)))
        if want_qkv:
            for j, proj in enumerate(layout.qkv[i]):
                handles.append(proj.register_forward_hook(_keep_output(grabbed_qkv[i], j)))
    try:
        out = (call or model)(**model_inputs(model, batch), output_hidden_states=True, return_dict=True)
    finally:
        for h in handles:
            h.remove()
    hidden = list(out.hidden_states)
    if len(hidden) != n + 1:
        raise RuntimeError(f"expected {n + 1} hidden states (embeddings + each layer), got {len(hidden)}")
    width = hidden[-1].shape[-1]
    if want_qkv and any(x is None for trio in grabbed_qkv for x in trio):
        raise RuntimeError("a query/key/value hook did not fire: the model does not run its layers as expected")
    trios = [split_qkv(outputs, width) for outputs in grabbed_qkv] if want_qkv else []
    if mha and mha_before_dropout:
        mask = batch["attention_mask"].bool()
        grabbed_mha = [attention_context(q, k, v, mask, layout.heads) for q, k, v in trios]
    elif mha and any(c is None for c in grabbed_mha):
        raise RuntimeError("an attention-output pre-hook did not fire: the model does not run its layers as expected")
    tok = layout.embedding_norm(layout.word_embeddings(batch["input_ids"])) if token_embeddings else None
    return Features(token_embeddings=tok, mha=list(grabbed_mha) if mha else [], qkv=trios if qkv else [],
                    hidden=hidden, logits=getattr(out, "logits", None), start_logits=getattr(out, "start_logits", None),
                    end_logits=getattr(out, "end_logits", None), heads=layout.heads)


def _keep_input(store: list, i: int):
    def hook(module, args):
        store[i] = args[0]
    return hook


def _keep_output(store: list, i: int):
    def hook(module, args, output):
        store[i] = output
    return hook


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


__all__ = ["capture_features", "attention_context", "split_heads"]
