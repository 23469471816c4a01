"""MLKD (or any registered objective) inside `transformers.Trainer`: swap `Trainer` for `MLKDTrainer`.

    trainer = MLKDTrainer(model=student, teacher=teacher, args=TrainingArguments(...),
                          train_dataset=train, eval_dataset=dev, processing_class=tokenizer,
                          compute_metrics=compute_metrics, distill_config=DistillConfig(objective="mlkd"))
    trainer.train()                       # stage 1 for the first stage1_fraction of the steps, then stage 2
    trainer.save_model("student")         # AutoModelForSequenceClassification.from_pretrained("student")

Everything TrainingArguments gives stays: mixed precision, gradient accumulation, logging (each loss term
is logged as `mlkd/<term>`), evaluation, checkpoints and `resume_from_checkpoint` (the projections are
saved in each checkpoint beside the student), DDP, `push_to_hub`. The loss is the project's registry
(train/stage.py); no loss is written twice. What differs from `mlkd_fast.distill`: the two stages share
TrainingArguments' one optimiser and lr schedule (distill gives stage 1 a constant lr and restarts the
schedule for stage 2), and under DDP the sample relations (L_SS, L_SC) span each device's batch.
Question answering: a *ForQuestionAnswering teacher and student; span predictions and the SQuAD scores are
the user's compute_metrics (as with Trainer), or `mlkd_fast.evaluate` on the saved student.
"""
from __future__ import annotations

import glob
import io
import os
from typing import Dict, Optional

import torch
import torch.nn as nn
import transformers

try:
    import accelerate  # noqa: F401 -- transformers.Trainer needs it; say so here, in one line
except ImportError as e:  # pragma: no cover - the test extra installs it
    raise ImportError("mlkd_fast.hf.MLKDTrainer needs accelerate: pip install 'mlkd_fast[hf]'") from e
from transformers.modeling_outputs import QuestionAnsweringModelOutput, SequenceClassifierOutput
from transformers.trainer_utils import get_last_checkpoint

from mlkd_fast.errors import InputError, InputTypeError
from mlkd_fast.ops import backends
from mlkd_fast.train.atomic import write_bytes
from mlkd_fast.train.config import DistillConfig
from mlkd_fast.train.loop import numbers
from mlkd_fast.train.models import check_head, is_qa_model
from mlkd_fast.train.stage import DistillSetup, StageObjective, checked_config, plan_terms

PROJECTIONS_FILE = "mlkd_projections.pt"


class MLKDTrainer(transformers.Trainer):
    """A `transformers.Trainer` whose loss is a distillation objective of `teacher` into `model` (the student).

    teacher: a fine-tuned classifier with the student's labels and vocabulary (frozen here), or a fine-tuned
        question-answering model for a *ForQuestionAnswering student (the batches then carry start_positions
        and end_positions, as Hugging Face's QA preprocessing makes them).
    distill_config: the objective, its weights, temperatures, `splits` and recipe choices (DistillConfig;
        its epochs, lr, batch size and precision are TrainingArguments' business here and are ignored).
    stage1_fraction: the share of the training steps spent on stage 1 (default: the config's
        stage1_epochs / (stage1_epochs + stage2_epochs); 0 for one-stage objectives).
    backend: the relation-op backend ("auto": the fastest available for the device).
    """

    # compute_loss returns each micro-batch's mean (it does not divide by num_items_in_batch): the Trainer divides
    # it by the accumulation steps, so that accumulated gradients are the mean over the micro-batches
    loss_is_scaled_for_ga = False

    def __init__(self, *args, teacher: nn.Module, distill_config: Optional[DistillConfig] = None,
                 stage1_fraction: Optional[float] = None, backend: str = "auto", **kwargs):
        super().__init__(*args, **kwargs)
        self.model_accepts_loss_kwargs = False  # the same for transformers releases before loss_is_scaled_for_ga
        cfg = checked_config(distill_config, name="distill_config")
        if not isinstance(teacher, nn.Module) or teacher is self.model:
            raise InputTypeError("teacher must be a model other than the student (model=)")
        num_labels = check_head(teacher, "teacher")
        self._qa = is_qa_model(teacher)  # question answering: start/end logits and answer positions
        if is_qa_model(self.model) != self._qa:
            raise InputError(f"the teacher is a {type(teacher).__name__} but the student (model=) a "
                             f"{type(self.model).__name__}: both need the same kind of head")
        check_head(self.model, "student (model=)", None, num_labels)
        self.stage1_fraction = _stage1_fraction(cfg, cfg.objective_stages, stage1_fraction)
        self.teacher, self.distill_config, self._regression = teacher, cfg, num_labels == 1 and not self._qa
        self._backend = backends.resolve(backend, self.args.device)
        self._term_sums: Dict[str, torch.Tensor] = {}
        self._term_count = 0
        # Trainer zeroes the student's gradients after each optimiser step; the projections are not part of
        # the student, so theirs are zeroed here (at the same point, also after a step fp16 skipped)
        self._zero_projections = _ZeroGradients(None)
        self.add_callback(self._zero_projections)
        self._projections_io = _ProjectionsIO(self)
        self.add_callback(self._projections_io)
        self._set_up(self.model)

    def _set_up(self, student: nn.Module) -> None:
        """The objectives and fresh projections for `student` (again for each model model_init gives)."""
        cfg = self.distill_config
        plan, term_settings = plan_terms(self.teacher, student, cfg, cfg.objective_stages, qa=self._qa)
        setup = DistillSetup.build(self.teacher, student, cfg, plan, term_settings, self.args.device, self._backend,
                                   self._regression)
        self.projections = setup.projections
        self.objectives = {s: StageObjective(s, cfg, setup.context, term_settings) for s in cfg.objective_stages}
        self._zero_projections.module = self.projections

    def call_model_init(self, trial=None):
        """model_init (hyper-parameter search): each new student gets new projections as well."""
        model = super().call_model_init(trial)
        if getattr(self, "teacher", None) is not None:  # not the first call, from Trainer.__init__
            self._set_up(model)
        return model

    def current_stage(self) -> int:
        """1 until stage1_fraction of the run's steps are done, then 2 (a one-stage objective: always 2)."""
        if 1 not in self.objectives:
            return 2
        if 2 not in self.objectives:
            return 1
        return 1 if self.state.global_step < round(self.stage1_fraction * self.state.max_steps) else 2

    def compute_loss(self, model, inputs, return_outputs: bool = False, num_items_in_batch=None):
        needed = ("start_positions", "end_positions") if self._qa else ("labels",)
        if any(k not in inputs for k in needed):
            raise InputError(f"MLKDTrainer needs the column(s) {list(needed)} (the hard-label terms read them; "
                             f"the batch has {sorted(inputs)})")
        if not model.training:  # evaluation: eval_loss is the student's own hard-label loss, the same in every
            outputs = model(**inputs)  # stage, so that metric_for_best_model="loss" compares like with like
            return (outputs.loss, outputs) if return_outputs else outputs.loss
        student = self.accelerator.unwrap_model(model)
        stage = self.current_stage()
        loss, terms, features = self.objectives[stage](self.teacher, student, inputs, call=model)
        if model.training:
            for name, value in terms.items():  # summed on the device; read when logged
                self._term_sums[name] = self._term_sums.get(name, 0.0) + value.double()
            self._term_count, self._term_stage = self._term_count + 1, stage
        if not return_outputs:
            return loss
        if self._qa:
            return loss, QuestionAnsweringModelOutput(loss=loss, start_logits=features.start_logits,
                                                      end_logits=features.end_logits)
        return loss, SequenceClassifierOutput(loss=loss, logits=features.logits)

    def log(self, logs: Dict[str, float], *args, **kwargs) -> None:
        """Adds each loss term's mean since the last log, and the stage, to the training logs."""
        if self._term_count and "loss" in logs:
            logs.update({f"mlkd/{k}": v / self._term_count for k, v in numbers(self._term_sums).items()})
            logs["mlkd/stage"] = self._term_stage
            self._term_sums, self._term_count = {}, 0
        super().log(logs, *args, **kwargs)

    def create_optimizer(self, model=None):
        """TrainingArguments' optimiser over the student, plus the projections (the BERT weight-decay rule)."""
        optimizer = super().create_optimizer(model) if model is not None else super().create_optimizer()
        held = {id(p) for group in optimizer.param_groups for p in group["params"]}
        if not any(id(p) in held for p in self.projections.parameters()):  # once per optimiser (per model_init)
            decay = [p for n, p in self.projections.named_parameters() if not n.endswith("bias")]
            no_decay = [p for n, p in self.projections.named_parameters() if n.endswith("bias")]
            optimizer.add_param_group({"params": decay, "weight_decay": self.args.weight_decay})
            optimizer.add_param_group({"params": no_decay, "weight_decay": 0.0})
        return optimizer

    def training_step(self, model, inputs, *args, **kwargs):
        """The student's gradients are averaged by DDP; the projections live outside it, so here."""
        loss = super().training_step(model, inputs, *args, **kwargs)
        if torch.distributed.is_available() and torch.distributed.is_initialized() and self.args.world_size > 1:
            for p in self.projections.parameters():
                if p.grad is not None:
                    torch.distributed.all_reduce(p.grad)
                    p.grad /= self.args.world_size
        return loss

    def train(self, resume_from_checkpoint=None, *args, **kwargs):
        """Trainer.train; resuming also restores the projections saved beside the checkpoint (at train begin,
        after model_init and the Trainer's own checkpoint loading, before the first step)."""
        folder = resume_from_checkpoint
        if folder is True:  # the Trainer's rule: the newest checkpoint in output_dir (it raises if there is none)
            folder = get_last_checkpoint(self.args.output_dir)
        self._projections_io.resume_from = folder if isinstance(folder, (str, os.PathLike)) else None
        return super().train(resume_from_checkpoint, *args, **kwargs)


class _ProjectionsIO(transformers.TrainerCallback):
    """The projections (not part of the student, so not in the Trainer's checkpoint) saved into each checkpoint
    folder the Trainer writes (on_save) and read back from the one a run resumes from (on_train_begin)."""

    def __init__(self, trainer: "MLKDTrainer"):
        self.trainer, self.resume_from = trainer, None

    def on_save(self, args, state, control, **kwargs):
        if not args.should_save:
            return
        name = f"checkpoint-{state.global_step}"
        # output_dir, or a trial's run-* folder under it (hyper-parameter search): the newest such checkpoint
        found = [d for d in [os.path.join(args.output_dir, name)] + glob.glob(os.path.join(args.output_dir, "*", name))
                 if os.path.isdir(d)]
        if not found:
            raise RuntimeError(f"MLKDTrainer: the Trainer saved no {name} folder under {args.output_dir}")
        buffer = io.BytesIO()
        torch.save(self.trainer.projections.state_dict(), buffer)
        write_bytes(os.path.join(max(found, key=os.path.getmtime), PROJECTIONS_FILE), buffer.getvalue())

    def on_train_begin(self, args, state, control, **kwargs):
        if self.resume_from is None:
            return
        path = os.path.join(self.resume_from, PROJECTIONS_FILE)
        if not os.path.exists(path):
            raise InputError(f"{self.resume_from} has no {PROJECTIONS_FILE}: it was not written by MLKDTrainer")
        self.trainer.projections.load_state_dict(torch.load(path, map_location=args.device, weights_only=True))


class _ZeroGradients(transformers.TrainerCallback):
    def __init__(self, module: Optional[nn.Module]):
        self.module = module  # set by MLKDTrainer._set_up

    def on_step_end(self, args, state, control, **kwargs):
        self.module.zero_grad(set_to_none=True)


def _stage1_fraction(cfg: DistillConfig, stages, given: Optional[float]) -> float:
    if given is None:
        total = cfg.stage1_epochs + cfg.stage2_epochs
        return 0.0 if 1 not in stages else 1.0 if 2 not in stages else cfg.stage1_epochs / max(1, total)
    if isinstance(given, bool) or not isinstance(given, (int, float)) or not 0 <= given <= 1:
        raise InputError(f"stage1_fraction must be a number in [0, 1], got {given!r}")
    return float(given)


__all__ = ["MLKDTrainer"]
