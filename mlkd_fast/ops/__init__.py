"""The op floor: the public fused ops, their validation, backend choice, eager reference and autograd wrappers.

One file per op (validation, dispatch, CPU autograd wrapper); the Triton
kernels live in the top-level `kernels/` package (installed as
`mlkd_fast.kernels`), the C++ ones in `csrc/` (built as `mlkd_fast._C`).
Nothing here imports the trainer or the data side (tests/test_architecture.py checks it).
"""
from mlkd_fast.ops.backends import available_backends
from mlkd_fast.ops.relation_kl import relation_kl, sample_relation_kl
from mlkd_fast.ops.sample_contrastive import sample_contrastive
from mlkd_fast.ops.soft_cross_entropy import soft_cross_entropy

__all__ = ["available_backends", "relation_kl", "sample_relation_kl", "sample_contrastive", "soft_cross_entropy"]
