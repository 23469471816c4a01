"""What one forward pass of a BERT yields for distillation (filled by capture.py)."""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import List, Optional, Tuple

import torch

# The optional parts of Features a loss term can ask for (objectives.register_term(needs=...)); the hidden
# states and logits come with every forward pass.
PARTS = ("token_embeddings", "mha", "qkv")


@dataclass
class Features:
    """Features of one model on one batch.

    token_embeddings: LayerNorm(word_embeddings(input_ids)), (B, L, D): input of L_EMB.
    mha: per Transformer layer (1..N), the concatenated heads' attention output,
         i.e. the input of attention.output.dense, (B, L, D): input of L_MHA.
    qkv: per Transformer layer, the (query, key, value) projections, (B, L, D) each:
         inputs of the TinyBERT attention-score and MiniLMv2 relation terms.
    hidden: H_0 (embedding output) .. H_N, (B, L, D) each: input of L_FFN.
    logits: (B, C) classifier output (C = 1 for regression); None for question answering.
    start_logits / end_logits: (B, L) question-answering outputs (None for classifiers).
    heads: the model's attention heads (how qkv splits into heads).
    """

    token_embeddings: Optional[torch.Tensor] = None
    mha: List[torch.Tensor] = field(default_factory=list)
    qkv: List[Tuple[torch.Tensor, torch.Tensor, torch.Tensor]] = field(default_factory=list)
    hidden: List[torch.Tensor] = field(default_factory=list)
    logits: Optional[torch.Tensor] = None
    start_logits: Optional[torch.Tensor] = None
    end_logits: Optional[torch.Tensor] = None
    heads: int = 0
    cls_state: Optional[torch.Tensor] = None  # (B, D) given directly (a teacher cache), else read from hidden

    @property
    def cls(self) -> torch.Tensor:
        """Last-layer hidden state of [CLS], (B, D): input of L_SS and L_SC."""
        return self.cls_state if self.cls_state is not None else self.hidden[-1][:, 0]
