"""One quality experiment: distil one student with one objective on one task and seed, append its row.

    python benchmarks/quality/run.py --task mrpc --objective mlkd --heads 12 --seed 42
    python benchmarks/quality/run.py --task mrpc --objective mlkd --heads 12 --seed 42 \
        --variant mlkd-no-emb --set stage1_weights.emb=0

The teacher (all-MiniLM-L6-v2 fine-tuned per task, grid.yaml "teacher") is trained once and cached in
runs/quality/teachers/<task>; every row of that task reuses it. The student (grid.yaml "student", `--heads`
heads) is copied from the teacher's layers, then trained by `mlkd_fast.distill` with `--objective` at the
task's budget (grid.yaml "tasks"), equal in optimiser steps across objectives. The kept student (best dev
point) is evaluated, timed, and its row appended to benchmarks/results/quality_<machine>.csv. A row whose
(task, variant, heads, seed, epochs) is already in the file is never rerun.

SQuAD v1.1 (`--task squad`): the official dev file (`--squad-file`) split by article, grid.yaml's
`held_out_articles` drawn with its `split_seed` held out and the rest trained on (no article on both sides); the
teacher is fine-tuned on the training articles, every student distilled on them, and each is scored on the
held-out articles by the official v1.1 rules. The held-out articles are written as a SQuAD file
(runs/quality/squad/held_out.json) and each row's predictions.json beside its student (<run>/eval/), the two
files the official evaluation script takes.
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import time

import torch
import yaml

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.dirname(HERE))
import hostinfo  # noqa: E402
import resultfile  # noqa: E402

from mlkd_fast import build_student, distill, evaluate, finetune, load_for_task  # noqa: E402
from mlkd_fast.cli import parse_setting_value  # noqa: E402
from mlkd_fast.data import get_task, load_glue_split  # noqa: E402
from mlkd_fast.data.squad import held_out_articles, read_squad_json, split_by_article, squad_subset  # noqa: E402
from mlkd_fast.train.config import OBJECTIVES, DistillConfig, FinetuneConfig, config_from_dict  # noqa: E402
from mlkd_fast.train.atomic import save_json  # noqa: E402
from mlkd_fast.train.head_init import sample_batches  # noqa: E402
from mlkd_fast.train.models import pretrained_teacher_dir  # noqa: E402

GRID = os.path.join(HERE, "grid.yaml")
KEY = ("task", "variant", "heads", "seed", "epochs")
METRICS = ("f1", "accuracy", "mcc", "pearson", "spearman", "exact_match")


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--task", required=True)
    p.add_argument("--objective", required=True, choices=tuple(OBJECTIVES))
    p.add_argument("--heads", type=int, default=12, help="student attention heads (default 12)")
    p.add_argument("--seed", type=int, default=42)
    p.add_argument("--variant", help="the row's name (default: the objective); required with --set")
    p.add_argument("--set", action="append", default=[], metavar="FIELD=VALUE",
                   help="a DistillConfig override, e.g. recipe=authors or stage1_weights.emb=0 (repeatable)")
    p.add_argument("--epochs", type=int, help="the budget: passes over the train set in all (default: grid.yaml)")
    p.add_argument("--stage1-epochs", type=int,
                   help="of --epochs, those spent on stage 1 by two-stage objectives (default: grid.yaml)")
    p.add_argument("--stages", help="stages to run, e.g. 2 (default: every stage of the objective)")
    p.add_argument("--student-layers", type=int, help="student layers (default: grid.yaml)")
    p.add_argument("--student-hidden", type=int, help="student width (default: the teacher's)")
    p.add_argument("--student-intermediate", type=int, help="student FFN width (default: the teacher's)")
    p.add_argument("--init", choices=("teacher", "random"), help="student weights (default: grid.yaml)")
    p.add_argument("--head-init", choices=("concat", "scaled", "grouped"),
                   help="how copied attention is cut into fewer heads (default concat; build_student)")
    p.add_argument("--student-dir", help="start from this (e.g. general-distilled) student instead of building one")
    p.add_argument("--teacher-model", help="pretrained encoder the teacher is fine-tuned from (default all-MiniLM-L6-v2)")
    p.add_argument("--glue-dir", default=os.path.join(hostinfo.REPO_DIR, "..", "shared", "data", "glue"))
    p.add_argument("--squad-file", default=os.path.join(hostinfo.REPO_DIR, "..", "shared", "data", "squad",
                                                        "dev-v1.1.json"),
                   help="the SQuAD v1.1 file split by article for --task squad (default the official dev file)")
    p.add_argument("--runs-dir", default=os.path.join(hostinfo.REPO_DIR, "runs", "quality"),
                   help="teachers and students go here (not committed)")
    p.add_argument("--results", help="CSV to append to (default benchmarks/results/quality_<machine>.csv)")
    p.add_argument("--device", default="cpu")
    args = p.parse_args(argv)
    shaped = any(getattr(args, k) is not None for k in ("student_layers", "student_hidden", "student_intermediate",
                                                           "init", "student_dir", "head_init"))
    if args.stage1_epochs is not None and args.epochs is None:
        p.error("--stage1-epochs is a share of --epochs: give both")
    if args.epochs is not None and not 0 <= (args.stage1_epochs or 0) < args.epochs:
        p.error(f"--stage1-epochs must be in [0, --epochs), got {args.stage1_epochs} of {args.epochs}")
    if (args.set or shaped) and not args.variant:
        p.error("--set and the student options change the experiment: name the row with --variant")
    return args


def overrides(pairs) -> dict:
    """["recipe=authors", "stage1_weights.emb=0"] -> {"recipe": "authors", "stage1_weights": {"emb": 0}}."""
    out: dict = {}
    for pair in pairs:
        if "=" not in pair:
            raise SystemExit(f"--set {pair!r}: expected FIELD=VALUE")
        key, value = pair.split("=", 1)
        value = parse_setting_value(pair, value)  # the CLI's reading: 2e-4 is a number, not YAML 1.1's string
        if "." in key:
            outer, inner = key.split(".", 1)
            out.setdefault(outer, {})[inner] = value
        else:
            out[key] = value
    return out


def task_data(task: str, args, task_grid: dict, runs_dir: str):
    """(train, dev, split) of a task: the GLUE files (split None), or for SQuAD one file split by article as
    grid.yaml says, the held-out articles also written as a SQuAD file for the official evaluation script."""
    if not get_task(task).qa:
        return load_glue_split(task, args.glue_dir, "train"), load_glue_split(task, args.glue_dir, "dev"), None
    k, seed = task_grid["held_out_articles"], task_grid["split_seed"]
    examples = read_squad_json(args.squad_file)
    train, dev = split_by_article(examples, k, seed)
    save_json(os.path.join(runs_dir, task, "held_out.json"),
              squad_subset(args.squad_file, held_out_articles(examples, k, seed)))
    split = f"{os.path.basename(args.squad_file)}: {k} held-out articles, split seed {seed}"
    if task_grid.get("max_train_samples"):  # drawn by the run's seed (prepare.subset): the teacher's and the row's
        split += f"; {task_grid['max_train_samples']} training questions drawn by the seed"
    return train, dev, split


def ensure_teacher(task: str, data: tuple, runs_dir: str, grid: dict, task_grid: dict, pretrained=None):
    """The task's fine-tuned teacher directory and its dev metrics; trained (or its run resumed) when missing."""
    train, dev, split = data
    out = os.path.join(runs_dir, "teachers", task)
    settings = dict(grid["teacher"], **task_grid.get("teacher", {}), max_seq_length=task_grid["max_seq_length"])
    if task_grid.get("max_train_samples"):
        settings["max_train_samples"] = task_grid["max_train_samples"]
    if split:
        settings["split"] = split
    metrics_file = os.path.join(out, "dev_metrics.json")
    if os.path.exists(metrics_file):
        with open(metrics_file) as f:
            saved = json.load(f)
        if saved["settings"] != settings:
            raise SystemExit(f"{out} holds a teacher trained with {saved['settings']}, not {settings}: move it away")
        return os.path.join(out, "model"), saved["metrics"]
    cfg = config_from_dict(FinetuneConfig, {k: v for k, v in settings.items() if k != "split"})
    spec = get_task(task)
    torch.manual_seed(cfg.seed)  # the new classification head
    model, tokenizer = load_for_task(pretrained or pretrained_teacher_dir(), spec.num_labels, qa=spec.qa)
    resume = os.path.exists(os.path.join(out, "checkpoint"))
    result = finetune(model, train, eval_data=dev, task=task, config=cfg, output_dir=out, tokenizer=tokenizer,
                      resume=resume, overwrite=not resume, progress=False)
    metrics = evaluate(result.model_dir, dev, task=task, max_seq_length=cfg.max_seq_length,
                       predictions_dir=os.path.join(out, "eval") if spec.qa else None)
    save_json(metrics_file, {"settings": settings, "metrics": metrics})
    return result.model_dir, metrics


def budget(objective: str, task_grid: dict) -> dict:
    """Epochs per stage at the task's budget: equal optimiser steps for every objective."""
    epochs, first = task_grid["epochs"], task_grid["stage1_epochs"]
    two_stage = 1 in OBJECTIVES[objective]
    return {"stage1_epochs": first if two_stage else 0, "stage2_epochs": epochs - first if two_stage else epochs}


def main(argv=None) -> int:
    args = parse_args(argv)
    with open(GRID) as f:
        grid = yaml.safe_load(f)
    task = get_task(args.task).name
    task_grid = dict(grid["tasks"][task])
    if args.epochs is not None:  # a longer (or shorter) budget is part of the row's key
        first = task_grid["stage1_epochs"] if args.stage1_epochs is None else args.stage1_epochs
        task_grid.update(epochs=args.epochs, stage1_epochs=first)
    variant = args.variant or args.objective
    path = args.results or os.path.join(resultfile.RESULTS_DIR, f"quality_{hostinfo.machine_kind(args.device)}.csv")
    key = dict(task=task, variant=variant, heads=str(args.heads), seed=str(args.seed), epochs=str(task_grid["epochs"]))
    if os.path.exists(path) and any(all(r.get(k) == v for k, v in key.items()) for r in resultfile.read_csv(path)):
        print(f"quality: {key} is already in {path}; not rerun")
        return 0
    data = task_data(task, args, task_grid, args.runs_dir)
    train, dev = data[:2]
    teacher_dir, teacher_metrics = ensure_teacher(task, data, args.runs_dir, grid, task_grid, args.teacher_model)

    values = dict(grid["distill"], objective=args.objective, seed=args.seed, device=args.device,
                  max_seq_length=task_grid["max_seq_length"], eval_every=task_grid["eval_every"],
                  max_train_samples=task_grid.get("max_train_samples"), **budget(args.objective, task_grid))
    values.update(task_grid.get("distill", {}))  # the task's own settings (grid.yaml), then the row's --set
    values.update(overrides(args.set))
    if values.get("teacher_cache") and not os.path.isabs(values["teacher_cache"]):
        values["teacher_cache"] = os.path.join(args.runs_dir, values["teacher_cache"])
    if values.get("teacher_mode") == "train" or values.get("recipe") == "authors":
        values["teacher_cache"] = None  # a teacher with dropout cannot be cached
    cfg = config_from_dict(DistillConfig, values)
    teacher, tokenizer = load_for_task(teacher_dir, get_task(task).num_labels, qa=get_task(task).qa)
    torch.manual_seed(args.seed)
    if args.student_dir:  # a task-agnostic student gets a fresh task head (seeded)
        student = load_for_task(args.student_dir, get_task(task).num_labels)[0]
        if student.config.num_attention_heads != args.heads:
            raise SystemExit(f"--student-dir has {student.config.num_attention_heads} heads, not --heads {args.heads}")
    else:
        shape = dict(grid["student"], num_heads=args.heads)
        for flag, name in (("student_layers", "num_layers"), ("student_hidden", "hidden_size"),
                          ("student_intermediate", "intermediate_size"), ("init", "init"), ("head_init", "head_init")):
            if getattr(args, flag) is not None:
                shape[name] = getattr(args, flag)
        if shape.get("head_init") == "grouped":  # the teacher's heads are compared on 256 training pairs
            shape["sample"] = sample_batches(train, tokenizer,
                                             get_task(task).num_labels, cfg.max_seq_length, seed=args.seed)
        student = build_student(teacher, **shape)
    student_init = "copied teacher layers" if (args.init or grid["student"]["init"]) == "teacher" else "random"
    out = os.path.join(args.runs_dir, task, f"{variant}_h{args.heads}_s{args.seed}")
    stages = [int(s) for s in args.stages.split(",")] if args.stages else None
    start = time.time()
    result = distill(teacher, student, train, eval_data=dev, task=task, config=cfg, output_dir=out, stages=stages,
                     tokenizer=tokenizer, overwrite=True, progress=False)
    wall = time.time() - start
    with open(os.path.join(out, "history.json")) as f:
        best = json.load(f)["best"]
    scored = evaluate(result.student_dir, dev, task=task, max_seq_length=cfg.max_seq_length,
                      latency_batches=grid["latency_batches"], batch_size=32,
                      predictions_dir=os.path.join(out, "eval") if get_task(task).qa else None)
    metric = result.metric
    row = dict(key, objective=args.objective, overrides=" ".join(args.set), student=f"{student.config.num_hidden_layers}L-"
               f"{student.config.hidden_size}", teacher=f"{teacher.config.num_hidden_layers}L-{teacher.config.hidden_size}",
               student_from=os.path.relpath(args.student_dir, hostinfo.REPO_DIR) if args.student_dir else student_init,
               stage1_epochs=cfg.stage1_epochs, stage2_epochs=cfg.stage2_epochs, learning_rate=f"{cfg.learning_rate:g}",
               teacher_cache="yes" if cfg.teacher_cache else "no", precision=cfg.precision, head_init=args.head_init or "concat",
               steps=sum(h["steps"] for h in result.history), metric=metric,
               **{f"dev_{k}": f"{v:.4f}" for k, v in scored.items() if k in METRICS},
               best_stage=best.get("stage"), best_step=best.get("step"),
               **{f"teacher_{k}": f"{v:.4f}" for k, v in teacher_metrics.items() if k in METRICS},
               split=data[2] or "", params=scored["parameters"], latency_ms=f"{scored['latency_ms_per_batch']:.1f}",
               wall_s=f"{wall:.0f}", **hostinfo.machine_info(args.device))
    resultfile.append_csv(path, [row])
    print(json.dumps(row))
    return 0


if __name__ == "__main__":
    sys.exit(main())
