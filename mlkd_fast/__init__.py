"""mlkd_fast: MLKD-BERT multi-level knowledge distillation with fused relation kernels.

Floors, each importing only the ones below it (tests/test_architecture.py checks):
    ops/    the public fused ops, their validation, backends and eager reference
    data/   task specs, readers, tokenisation, batching, metrics
    train/  objectives (loss registry), feature capture, students, the training loop,
            checkpoints, configs, finetune / distill / evaluate
    cli.py  the `mlkd-fast` command (also `python -m mlkd_fast`)
`import mlkd_fast` does not load transformers or datasets; they load on first use.
"""
from mlkd_fast.data.glue import load_split
from mlkd_fast.ops import (
    available_backends,
    relation_kl,
    sample_contrastive,
    sample_relation_kl,
    soft_cross_entropy,
)
from mlkd_fast.train.capture import capture_features
from mlkd_fast.train.config import DistillConfig, FinetuneConfig
from mlkd_fast.train.distill import DistillResult, distill
from mlkd_fast.train.encoders import EncoderPaths, register_encoder
from mlkd_fast.train.evaluate import evaluate
from mlkd_fast.train.finetune import FinetuneResult, finetune
from mlkd_fast.train.general import GeneralDistillResult, general_distill
from mlkd_fast.train.models import load_for_task, pretrained_teacher_dir
from mlkd_fast.train.student import build_student
from mlkd_fast.version import __version__  # noqa: F401  (written once, in version.py)

__all__ = [
    "build_student",
    "capture_features",
    "distill",
    "DistillConfig",
    "DistillResult",
    "EncoderPaths",
    "register_encoder",
    "evaluate",
    "finetune",
    "FinetuneConfig",
    "FinetuneResult",
    "general_distill",
    "GeneralDistillResult",
    "load_split",
    "load_for_task",
    "pretrained_teacher_dir",
    "available_backends",
    "relation_kl",
    "sample_relation_kl",
    "sample_contrastive",
    "soft_cross_entropy",
]
