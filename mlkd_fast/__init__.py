"""mlkd_fast: MLKD-BERT multi-level knowledge distillation with fused relation kernels.

Ops (see shared KERNELS.md for the contract):
    relation_kl, sample_relation_kl, sample_contrastive, soft_cross_entropy, available_backends
"""
from mlkd_fast.backends import available_backends
from mlkd_fast.ops import relation_kl, sample_contrastive, sample_relation_kl, soft_cross_entropy

__version__ = "0.1.0"

__all__ = [
    "available_backends",
    "relation_kl",
    "sample_relation_kl",
    "sample_contrastive",
    "soft_cross_entropy",
]
