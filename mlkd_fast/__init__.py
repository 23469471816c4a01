"""mlkd_fast: MLKD-BERT multi-level knowledge distillation with fused relation kernels.

Ops (see shared KERNELS.md for the contract):
    relation_kl, sample_relation_kl, sample_contrastive, soft_cross_entropy, available_backends
Trainer (`import mlkd_fast` does not load transformers/datasets; they load on first use):
    build_student, distill, DistillConfig, DistillResult, finetune, FinetuneConfig,
    FinetuneResult, evaluate, capture_features, load_split
"""
from mlkd_fast.backends import available_backends
from mlkd_fast.ops import relation_kl, sample_contrastive, sample_relation_kl, soft_cross_entropy

__version__ = "0.1.0"

# The trainer modules import transformers/datasets only inside functions, so these
# imports stay cheap. They are eager on purpose: the functions `distill`, `finetune`
# and `evaluate` share their names with their modules, and binding them here, after
# the submodules are loaded, keeps `mlkd_fast.distill` the function in every import order.
from mlkd_fast.capture import capture_features
from mlkd_fast.config import DistillConfig, FinetuneConfig
from mlkd_fast.data import load_split
from mlkd_fast.distill import DistillResult, distill
from mlkd_fast.evaluate import evaluate
from mlkd_fast.finetune import FinetuneResult, finetune
from mlkd_fast.student import build_student

__all__ = [
    "build_student",
    "capture_features",
    "distill",
    "DistillConfig",
    "DistillResult",
    "evaluate",
    "finetune",
    "FinetuneConfig",
    "FinetuneResult",
    "load_split",
    "available_backends",
    "relation_kl",
    "sample_relation_kl",
    "sample_contrastive",
    "soft_cross_entropy",
]
