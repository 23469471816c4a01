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
) -> Features:
    """Run `model` on `batch` once and return its Features.

    mha=False / token_embeddings=False skip what stage 2 does not need.
    Gradients flow as usual: wrap the call in torch.no_grad() for the teacher.
    """
    emb, layers = encoder_layers(model)
    captured: List[Optional[torch.Tensor]] = [None] * len(layers)
    handles = []
    if mha:
        for i, layer in enumerate(layers):

            def grab(module, args, i=i):
                captured[i] = args[0]

            handles.append(layer.attention.output.dense.register_forward_pre_hook(grab))
    inputs = {k: batch[k] for k in ("input_ids", "attention_mask", "token_type_ids") if k in batch}
    try:
        out = model(**inputs, output_hidden_states=True, return_dict=True)
    finally:
        for h in handles:
            h.remove()
    hidden = list(out.hidden_states)
    if len(hidden) != len(layers) + 1:
        raise RuntimeError(f"expected {len(layers) + 1} hidden states (embeddings + each layer), got {len(hidden)}")
    if mha and any(c is None for c in captured):
        raise RuntimeError("an attention.output.dense pre-hook did not fire: the model does not run its layers as expected")
    tok = emb.LayerNorm(emb.word_embeddings(batch["input_ids"])) if token_embeddings else None
    return Features(token_embeddings=tok, mha=list(captured) if mha else [], hidden=hidden, logits=out.logits)


__all__ = ["capture_features", "encoder_layers"]
