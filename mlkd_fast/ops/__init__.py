"""The public ops. Each file holds one op: validation, dispatch, CPU autograd wrapper."""
from mlkd_fast.ops.relation_kl import relation_kl, sample_relation_kl
from mlkd_fast.ops.sample_contrastive import sample_contrastive
from mlkd_fast.ops.soft_cross_entropy import soft_cross_entropy

__all__ = ["relation_kl", "sample_relation_kl", "sample_contrastive", "soft_cross_entropy"]
