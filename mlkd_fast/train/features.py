"""What one forward pass of a BERT yields for MLKD (filled by capture.py)."""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import List, Optional

import torch


@dataclass
class Features:
    """Features of one model on one batch.

    token_embeddings: LayerNorm(word_embeddings(input_ids)), (B, L, D): input of L_EMB.
    mha: per Transformer layer (1..N), the concatenated heads' attention output,
         i.e. the input of attention.output.dense, (B, L, D): input of L_MHA.
    hidden: H_0 (embedding output) .. H_N, (B, L, D) each: input of L_FFN.
    logits: (B, C) classifier output (C = 1 for regression).
    """

    token_embeddings: Optional[torch.Tensor] = None
    mha: List[torch.Tensor] = field(default_factory=list)
    hidden: List[torch.Tensor] = field(default_factory=list)
    logits: Optional[torch.Tensor] = None

    @property
    def cls(self) -> torch.Tensor:
        """Last-layer hidden state of [CLS], (B, D): input of L_SS and L_SC."""
        return self.hidden[-1][:, 0]
