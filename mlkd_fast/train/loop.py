"""The one training loop. Every trainer path runs its phases through `run_phases`:
fine-tuning is one phase, MLKD distillation is two (stage 1, stage 2).

    for phase in phases:
        for epoch in the phase's remaining epochs:
            for batch in the seeded epoch order (a resumed epoch starts at state.step):
                loss, terms = phase.step(batch)        # the path's objective
                backward -> clip -> optimizer -> scheduler
                side jobs (LoopJob): progress and log, dev metrics, checkpoint, stop signal, step budget
            dev metrics -> history -> best model kept -> checkpoint

A path describes itself (a `Run` and its `Phase`s) and never copies this loop.
The run state is one dataclass, saved whole in every checkpoint, so a resumed
run replays exactly the batches, RNG draws and optimiser steps it had left.
"""
from __future__ import annotations

import dataclasses
import math
import os
import signal
import threading
import time
from dataclasses import dataclass, field
from typing import Any, Callable, Dict, List, Optional, Sequence, Tuple

import torch
import torch.nn as nn

from mlkd_fast.data.batching import Collator, batches, epoch_order, num_batches
from mlkd_fast.data.metrics import main_metric
from mlkd_fast.data.squad import QADev
from mlkd_fast.errors import DivergenceError, RunInterrupted
from mlkd_fast.train import checkpoint
from mlkd_fast.train.atomic import save_json, save_model_atomic
from mlkd_fast.train.distributed import SINGLE, Dist
from mlkd_fast.train.evaluate import evaluate_model, write_predictions
from mlkd_fast.train.logs import MetricLogger, progress_bar
from mlkd_fast.train.precision import Precision

StepFn = Callable[[Dict[str, torch.Tensor]], Tuple[torch.Tensor, Dict[str, float]]]


@dataclass
class RunState:
    """Where a run stands; everything a checkpoint needs to continue it."""

    stage: int = 0  # the phase being run: 0 = fine-tuning, 1 and 2 = MLKD stages
    epoch: int = 0  # epochs of this phase already finished
    step: int = 0  # batches of the current epoch already trained
    global_step: int = 0  # optimiser steps over the whole run
    sums: Dict[str, float] = field(default_factory=dict)  # per-term loss sums over the current epoch
    count: int = 0  # batches summed in `sums`
    history: List[Dict[str, Any]] = field(default_factory=list)  # one record per finished epoch
    evals: List[Dict[str, Any]] = field(default_factory=list)  # the dev evaluations within epochs (eval_every)
    best: Optional[Dict[str, Any]] = None  # {"value", "epoch", "step"[, "stage"]} of the kept model

    def enter_phase(self, stage: int) -> None:
        self.stage, self.epoch, self.step, self.sums, self.count = stage, 0, 0, {}, 0

    def add_step(self, terms: Dict[str, float]) -> None:
        for k, v in terms.items():
            self.sums[k] = self.sums.get(k, 0.0) + v
        self.count += 1
        self.step += 1
        self.global_step += 1

    def finish_epoch(self) -> None:
        self.epoch, self.step, self.sums, self.count = self.epoch + 1, 0, {}, 0

    def epoch_means(self) -> Dict[str, float]:
        return {k: v / max(1, self.count) for k, v in self.sums.items()}

    def to_dict(self) -> Dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, values: Dict[str, Any]) -> "RunState":
        return cls(**values)


@dataclass
class Phase:
    """One optimisation phase: its objective, optimiser, schedule and length."""

    stage: int  # 0 = fine-tuning; 1, 2 = MLKD stages (also keys the seeded epoch order)
    label: str  # progress-bar prefix
    epochs: int
    step: StepFn  # batch -> (loss to minimise, per-term values to log)
    optimizer: torch.optim.Optimizer
    scheduler: Any  # a torch lr scheduler
    clip_params: Sequence[torch.Tensor]  # parameters whose global gradient norm is clipped
    max_grad_norm: Optional[float] = None  # the global clipping norm; None = the config's (0 or inf = no clipping)
    keep_best: bool = True  # choose the kept model on this phase's dev metric
    save_at_end: Optional[str] = None  # also save the model here when the phase ends


@dataclass
class Run:
    """What every phase of one run shares: the model being trained and kept, data, evaluation, output."""

    kind: str  # "finetune" or "distill": the checkpoint's kind
    config: Any  # FinetuneConfig or DistillConfig: batch sizes, seed, clipping, checkpoint interval
    output_dir: str
    settings: Dict[str, Any]  # what defines the run (checked on resume)
    model: nn.Module  # trained, evaluated after each epoch, kept as the best
    model_dir: str  # where the kept model is saved
    train: Any  # tokenised datasets.Dataset
    dev: Any  # tokenised datasets.Dataset or None
    task: Any  # TaskSpec or None
    collate: Collator  # pads batches; knows the pad id and whether labels are scores
    device: torch.device
    tokenizer: Any = None
    progress: bool = True
    extra_modules: Dict[str, nn.Module] = field(default_factory=dict)  # trained beside the model (projections)
    dist: Dist = SINGLE  # the ranks of a data-parallel run; rank 0 alone writes files
    amp: Any = None  # precision.Precision of the step; fp32 (no autocast) when None
    last_predictions: Any = None  # question answering: the last evaluation's span predictions (not checkpointed)

    def __post_init__(self):
        if self.amp is None:
            self.amp = Precision(self.config.precision, self.device)

    @property
    def metric(self) -> Optional[str]:
        """The dev metric that picks the kept model (None without dev data)."""
        if self.dev is None:
            return None
        return "f1" if isinstance(self.dev, QADev) else main_metric(self.task, self.collate.regression)


@dataclass
class RunResult:
    """What a trainer path returns: the epoch history and the kept model's dev score."""

    history: List[Dict] = field(default_factory=list)  # one dict per epoch: [stage,] epoch, mean loss terms, dev metrics
    best_metric: Optional[float] = None  # dev value of `metric` for the kept model (None without dev data)
    metric: Optional[str] = None

    @classmethod
    def of(cls, run: Run, state: RunState, **where):
        best = state.best["value"] if state.best else None
        return cls(history=state.history, best_metric=best, metric=run.metric, **where)


def run_phases(run: Run, phases: Sequence[Phase], saved: Optional[Dict[str, Any]]) -> RunState:
    """Train every phase in order (resuming from `saved`, a checkpoint of this run, when given)."""
    state = RunState.from_dict(saved["state"]) if saved is not None else RunState(stage=phases[0].stage)
    if saved is not None:
        run.model.load_state_dict(saved["modules"]["model"])
        for name, module in run.extra_modules.items():
            module.load_state_dict(saved["modules"][name])
    tensorboard = os.path.join(run.output_dir, "tensorboard") if run.config.report_to == "tensorboard" else None
    logger = MetricLogger(os.path.join(run.output_dir, "metrics.jsonl"), tensorboard,
                          enabled=run.dist.is_main)
    with StopSignals() as stop:
        try:
            _run_phases(run, phases, saved, state, logger, stop)
        finally:
            logger.close()
    if run.dist.is_main:
        save_json(os.path.join(run.output_dir, "history.json"),
                  {"history": state.history, "evals": state.evals, "best": state.best, "metric": run.metric})
    run.dist.barrier()
    return state


def _run_phases(run: Run, phases: Sequence[Phase], saved, state: RunState, logger, stop: "StopSignals") -> None:
    for phase in phases:
        if phase.stage < state.stage:
            continue  # finished before the checkpoint was written
        if saved is not None and saved["state"]["stage"] == phase.stage:
            # the checkpoint was written in this phase: continue its optimiser, schedule and RNG streams
            phase.optimizer.load_state_dict(saved["optimizer"])
            phase.scheduler.load_state_dict(saved["scheduler"])
            run.amp.load_state_dict(saved.get("scaler", {}))
            _restore_rng(run, saved, state)
        elif state.stage != phase.stage:
            state.enter_phase(phase.stage)
        for epoch in range(state.epoch, phase.epochs):
            if _budget_spent(run, state):
                break
            _train_epoch(run, phase, state, epoch, logger, stop)
            _end_epoch(run, phase, state, epoch, logger)
        if phase.save_at_end and run.dist.is_main:
            save_model_atomic(run.model, phase.save_at_end, run.tokenizer)


def _train_epoch(run: Run, phase: Phase, state: RunState, epoch: int, logger: MetricLogger, stop: "StopSignals") -> None:
    cfg, dist = run.config, run.dist
    order = epoch_order(len(run.train), cfg.seed, phase.stage * 100_000 + epoch)
    at = Position(run, phase, state, epoch, total=num_batches(len(run.train), cfg.batch_size, dist.world, cfg.drop_last))
    jobs = [Progress(at, logger), EvaluateEvery(logger), CheckpointEvery(), StopOnSignal(stop), StepBudget()]
    run.model.train()
    try:
        for batch in batches(run.train, order, cfg.batch_size, run.collate, start=state.step,
                             shard=(dist.rank, dist.world), drop_last=cfg.drop_last):
            batch = {k: v.to(run.device) for k, v in batch.items()}
            at.terms, at.stop_asked = _accumulate(run, phase, batch, state, epoch, stop)
            _optimizer_step(run, phase, at.terms, state, epoch)
            state.add_step(at.terms)
            at.tokens = float(batch["attention_mask"].sum()) * dist.world
            for job in jobs:  # the side jobs, in this order; one may end the epoch (budget) or the run (signal)
                job.on_step(at)
            if at.end_epoch:
                break
    finally:
        for job in jobs:
            job.on_epoch_end(at)


def _optimizer_step(run: Run, phase: Phase, terms: Dict[str, float], state: RunState, epoch: int) -> None:
    """Unscale, average over ranks, clip, step. The norm is always taken (max_norm=inf scales by exactly 1): a
    non-finite gradient stops the run before the optimiser writes it into the weights (fp16: the scaler skips
    that step instead)."""
    max_norm = run.config.max_grad_norm if phase.max_grad_norm is None else phase.max_grad_norm
    run.amp.unscale(phase.optimizer)
    run.dist.average_gradients(phase.clip_params)
    norm = nn.utils.clip_grad_norm_(phase.clip_params, max_norm if max_norm > 0 else float("inf"))
    if not run.amp.skips_overflow:
        _check_finite("gradient norm", float(norm), terms, phase, state, epoch)
    run.amp.step(phase.optimizer)
    phase.scheduler.step()


@dataclass
class Position:
    """Where the loop is, for its side jobs: the run, phase, state and epoch, and what the last step gave."""

    run: Run
    phase: Phase
    state: RunState
    epoch: int
    total: int  # batches in this epoch (on this rank)
    terms: Dict[str, float] = field(default_factory=dict)  # the last step's loss terms (global values)
    tokens: float = 0.0  # tokens of the last step's global batch
    stop_asked: bool = False  # some rank was signalled to stop before the last step (data parallel)
    end_epoch: bool = False  # a side job ends the epoch after this step


class LoopJob:
    """A side job of the loop, called after every optimiser step and when the epoch's steps end (also when a
    step raised: the run stops then)."""

    def on_step(self, at: Position) -> None:
        pass

    def on_epoch_end(self, at: Position) -> None:
        pass


class Progress(LoopJob):
    """The progress bar (a terminal) or its plain lines (a log file), and the per-step metrics log."""

    def __init__(self, at: Position, logger: MetricLogger):
        self.logger, self.started = logger, time.perf_counter()
        self.bar = progress_bar(at.total, at.state.step, f"{at.phase.label} epoch {at.epoch + 1}/{at.phase.epochs}",
                                at.run.progress and at.run.dist.is_main)

    def on_step(self, at: Position) -> None:
        tokens_per_s = at.tokens / max(1e-9, time.perf_counter() - self.started)
        self.started = time.perf_counter()
        self.bar.set_postfix({**{k: f"{v:.4f}" for k, v in at.terms.items()}, "tok/s": f"{tokens_per_s:.0f}"})
        self.bar.update(1)
        self.logger.log({"kind": "train", **_where(at.phase, at.epoch), "step": at.state.global_step,
                         "lr": at.phase.scheduler.get_last_lr()[0], "tokens_per_s": tokens_per_s, **at.terms},
                        step=at.state.global_step)

    def on_epoch_end(self, at: Position) -> None:
        self.bar.close()


class EvaluateEvery(LoopJob):
    """Dev metrics every `eval_every` steps of the model-choosing phase (the epoch's end evaluates anyway),
    logged, and the model kept when it is the best so far."""

    def __init__(self, logger: MetricLogger):
        self.logger = logger

    def on_step(self, at: Position) -> None:
        cfg, state = at.run.config, at.state
        if cfg.eval_every and at.phase.keep_best and state.global_step % cfg.eval_every == 0 and state.step < at.total:
            evaluated = {**_where(at.phase, at.epoch), "step": state.global_step, "metrics": _dev_metrics(at.run)}
            state.evals.append(evaluated)
            self.logger.log(dict(evaluated, kind="eval"), step=state.global_step)
            _keep_if_best(at.run, at.phase, state, evaluated)


class CheckpointEvery(LoopJob):
    """A resumable checkpoint every `checkpoint_every` optimiser steps (the epoch's end writes one anyway)."""

    def on_step(self, at: Position) -> None:
        every = at.run.config.checkpoint_every
        if every and at.state.global_step % every == 0:
            _save_state(at.run, at.phase, at.state)


class StopOnSignal(LoopJob):
    """SIGINT/SIGTERM: a checkpoint, then RunInterrupted. One process stops at the end of the step the signal
    arrived in; data parallel, every rank stops at the same step, after the one whose start saw a signal on
    any rank (the flag rides on the terms' all-reduce)."""

    def __init__(self, stop: "StopSignals"):
        self.stop = stop

    def on_step(self, at: Position) -> None:
        if at.stop_asked if at.run.dist.enabled else self.stop.received:
            _save_state(at.run, at.phase, at.state)
            raise RunInterrupted(f"{self.stop.received or 'a signal to another rank'} received: stopped after global "
                                 f"step {at.state.global_step} ({at.phase.label}, epoch {at.epoch + 1}); checkpoint "
                                 f"written to {at.run.output_dir}")


class StepBudget(LoopJob):
    """max_steps reached: the epoch ends here (evaluated, kept, checkpointed as any other)."""

    def on_step(self, at: Position) -> None:
        at.end_epoch = at.end_epoch or _budget_spent(at.run, at.state)


def _budget_spent(run: Run, state: RunState) -> bool:
    return bool(run.config.max_steps) and state.global_step >= run.config.max_steps


def _accumulate(run: Run, phase: Phase, batch, state: RunState, epoch: int, stop: "StopSignals"):
    """Forward and backward of this rank's shard, in cfg.grad_accum_steps micro-batches whose gradients add up
    to their mean. Returns the global values of the terms (averaged over micro-batches and ranks) and whether
    any rank was signalled to stop."""
    accum = run.config.grad_accum_steps
    parts = [batch] if accum == 1 else [dict(zip(batch, vs)) for vs in zip(*(v.chunk(accum) for v in batch.values()))]
    phase.optimizer.zero_grad(set_to_none=True)
    total: Dict[str, float] = {}
    for part in parts:
        with run.amp.autocast():
            loss, terms = phase.step(part)
        # the global values of the terms (this rank's shares averaged over ranks), and the stop flags of all ranks
        terms, stops = run.dist.mean(numbers(dict(terms, loss=loss.detach())), extra=float(stop.received is not None))
        _check_finite("loss", terms["loss"], terms, phase, state, epoch)
        run.amp.backward(loss / accum if accum > 1 else loss)
        for k, v in terms.items():
            total[k] = total.get(k, 0.0) + v / accum if accum > 1 else v
    return total, stops


def numbers(values: Dict[str, Any]) -> Dict[str, float]:
    """A step's loss values (0-dim tensors or numbers) as Python floats, read from the device in one go (one
    host sync per step, whatever the number of terms)."""
    keys = [k for k, v in values.items() if torch.is_tensor(v)]
    if not keys:
        return dict(values)
    read = torch.stack([values[k].double() for k in keys]).tolist()
    return {**values, **dict(zip(keys, read))}


class StopSignals:
    """While a run trains, SIGINT/SIGTERM ask it to stop at the next step boundary, after writing a checkpoint
    (RunInterrupted then says how to resume); a second signal stops at once. Main thread only (Python's rule)."""

    def __enter__(self) -> "StopSignals":
        self.received: Optional[str] = None
        self.previous = {}
        if threading.current_thread() is threading.main_thread():
            for sig in (signal.SIGINT, signal.SIGTERM):
                self.previous[sig] = signal.signal(sig, self._handle)
        return self

    def _handle(self, signum, frame) -> None:
        if self.received is not None:
            raise KeyboardInterrupt(f"second {signal.Signals(signum).name}: stopping without a checkpoint")
        self.received = signal.Signals(signum).name

    def __exit__(self, *exc) -> None:
        for sig, handler in self.previous.items():
            signal.signal(sig, handler)


def _check_finite(what: str, value: float, terms: Dict[str, float], phase: Phase, state: RunState, epoch: int):
    """Stop a diverging run loudly, naming where and which loss terms; nothing of this step is saved.
    The values are the same on every rank (reduced), so every rank stops at the same step."""
    if math.isfinite(value):
        return
    bad = [k for k, v in terms.items() if not math.isfinite(v)]
    where = f"{phase.label}, epoch {epoch + 1}, step {state.step + 1} of the epoch (global step {state.global_step + 1})"
    raise DivergenceError(
        f"the {what} is {value} at {where}"
        + (f"; non-finite terms: {bad}" if bad else "")
        + ". The run stopped before saving this step: the last checkpoint and the kept model are from before it. "
        "Lower the learning rate, check the data for non-finite values, or clip gradients (max_grad_norm)."
    )


def _end_epoch(run: Run, phase: Phase, state: RunState, epoch: int, logger: MetricLogger) -> None:
    """Dev metrics, the epoch's history record, the best model, and a checkpoint."""
    record = {**_where(phase, epoch), "steps": state.count, **state.epoch_means()}
    if run.dev is not None:
        record["metrics"] = _dev_metrics(run)
    state.history.append(record)
    logger.log(dict(record, kind="epoch"), step=state.global_step)
    _keep_if_best(run, phase, state, dict(record, step=state.global_step))
    state.finish_epoch()
    _save_state(run, phase, state)


def _dev_metrics(run: Run) -> Optional[Dict[str, float]]:
    """Rank 0 evaluates on the dev set; every rank gets its metrics (None without dev data). Question answering:
    the span predictions are held (run.last_predictions) until _keep_if_best writes the kept model's."""
    metrics, held = None, [] if isinstance(run.dev, QADev) else None
    if run.dev is not None and run.dist.is_main:
        metrics = evaluate_model(run.model, run.dev, run.task, run.config.eval_batch_size, run.device,
                                 run.collate.pad_token_id, keep_predictions=held)
    run.last_predictions = held[0] if held else None
    return run.dist.broadcast_object(metrics)  # (evaluation restores the model's training mode itself)


def _keep_if_best(run: Run, phase: Phase, state: RunState, record: Dict[str, Any]) -> None:
    """In the model-choosing phase, save the model when its dev metric beats the kept one (without dev
    data, the latest is kept); question answering: its predictions in the reference scripts' files, in
    <output_dir>/predictions."""
    if not phase.keep_best:
        return
    value = record["metrics"][run.metric] if run.dev is not None else None
    if state.best is None or value is None or value > state.best["value"]:
        state.best = {"value": value, **_where(phase, record["epoch"] - 1), "step": record["step"]}
        if run.dist.is_main:
            save_model_atomic(run.model, run.model_dir, run.tokenizer)
            if run.last_predictions is not None:
                write_predictions(os.path.join(run.output_dir, "predictions"), *run.last_predictions)


def _where(phase: Phase, epoch: int) -> Dict[str, int]:
    """The (stage, epoch) label of log and history records; fine-tuning records carry no stage."""
    return {"stage": phase.stage, "epoch": epoch + 1} if phase.stage else {"epoch": epoch + 1}


def _save_state(run: Run, phase: Phase, state: RunState) -> None:
    """Rank 0 writes the state (weights and optimiser are the same on every rank); every rank's RNG goes in."""
    rngs = run.dist.gather_objects(checkpoint.rng_state())
    if not run.dist.is_main:
        return
    modules = {"model": run.model.state_dict(), **{n: m.state_dict() for n, m in run.extra_modules.items()}}
    checkpoint.save_state(run.output_dir, {
        "kind": run.kind, "config": run.settings, "state": state.to_dict(), "modules": modules,
        "optimizer": phase.optimizer.state_dict(), "scheduler": phase.scheduler.state_dict(),
        "rng": rngs[0], **({"rng_ranks": rngs} if run.dist.enabled else {}),
        **({"scaler": run.amp.state_dict()} if run.amp.scaler is not None else {}),
    })


def _restore_rng(run: Run, saved: Dict[str, Any], state: RunState) -> None:
    """This rank's RNG streams as saved; on another number of ranks, fresh streams from (seed, step, rank)."""
    ranks = saved.get("rng_ranks") or [saved["rng"]]
    if len(ranks) == run.dist.world:
        checkpoint.set_rng_state(ranks[run.dist.rank])
    else:
        checkpoint.seed_everything(hash((run.config.seed, state.global_step, run.dist.rank)) % 2**31)


__all__ = ["RunState", "Phase", "Run", "RunResult", "run_phases"]
