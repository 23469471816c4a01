"""The CLI's defaults are the API's, read from where they live (config dataclasses, evaluate(), general
distillation's GENERAL_DEFAULTS), and --help shows them; --debug works after the subcommand too."""
import dataclasses
import inspect

import pytest

from mlkd_fast import cli
from mlkd_fast.train.config import DistillConfig, FinetuneConfig
from mlkd_fast.train.evaluate import evaluate
from mlkd_fast.train.general import GENERAL_DEFAULTS


@pytest.mark.parametrize("command,cls,flags,over", [
    ("finetune", FinetuneConfig, cli.FINETUNE_FLAGS, {}),
    ("distill", DistillConfig, cli.DISTILL_FLAGS, {}),
    ("general-distill", DistillConfig, cli.GENERAL_FLAGS, GENERAL_DEFAULTS),
])
def test_training_flags_left_out_give_the_api_defaults(command, cls, flags, over, capsys):
    extra = {"distill": ["--teacher", "t"], "general-distill": ["--corpus", "c"]}.get(command, [])
    args = cli.build_parser().parse_args([command, "--output-dir", "o"] + extra)
    section = dict(over)
    cfg = cli._train_config(cls, args, section, flags)
    assert dataclasses.asdict(cfg) == dataclasses.asdict(cls(**over))
    with pytest.raises(SystemExit):
        cli.build_parser().parse_args([command, "--help"])
    text = " ".join(capsys.readouterr().out.split())
    api = cls(**over)
    for dest in ("batch_size", "learning_rate", "max_seq_length", "seed"):
        assert f"(default: {getattr(api, flags[dest])})" in text, dest


def test_evaluate_defaults_are_evaluates(capsys):
    params = inspect.signature(evaluate).parameters
    for key in ("batch_size", "max_seq_length", "device"):
        assert cli.EVALUATE_DEFAULTS[key] == params[key].default
    assert params["device"].default == "auto"  # as training
    with pytest.raises(SystemExit):
        cli.build_parser().parse_args(["evaluate", "--help"])
    text = " ".join(capsys.readouterr().out.split())
    assert f"(default: {params['batch_size'].default})" in text and "(default: auto)" in text


def test_debug_before_or_after_the_subcommand():
    parser = cli.build_parser()
    assert parser.parse_args(["--debug", "env"]).debug and parser.parse_args(["env", "--debug"]).debug
    assert parser.parse_args(["env"]).debug is False


def _flag_value(field, kind):
    """A value other than the default for a flag of this type (the last choice where there are choices)."""
    if "choices" in field.metadata:
        return list(field.metadata["choices"])[-1]
    return {int: 4, float: 0.25, str: "cpu" if field.name == "device" else "some/folder"}[kind]


@pytest.mark.parametrize("command,cls,flags,over", [
    ("finetune", FinetuneConfig, cli.FINETUNE_FLAGS, {}),
    ("distill", DistillConfig, cli.DISTILL_FLAGS, {}),
    ("general-distill", DistillConfig, cli.GENERAL_FLAGS, GENERAL_DEFAULTS),
])
def test_each_setting_flag_is_generated_from_its_field_and_sets_it(command, cls, flags, over):
    """The flags come from the fields (config.setting): every setting of the command's config has one, and a
    value given on the command line is the config's value, of the field's type."""
    import typing

    fields = {f.name: f for f in dataclasses.fields(cls)}
    settings = [f.name for f in dataclasses.fields(cls) if "help" in f.metadata]
    if command != "general-distill":  # general distillation has one stage: a subset, --epochs for stage 1
        assert sorted(flags.values()) == sorted(settings)
    hints = typing.get_type_hints(cls)
    argv, expected = [command, "--output-dir", "o"], {}
    argv += {"distill": ["--teacher", "t"], "general-distill": ["--corpus", "c"]}.get(command, [])
    for dest, name in flags.items():
        if name == "teacher_cache":  # refused beside teacher_mode=train (the last choice); --teacher-cache: below
            continue
        kind = next((t for t in typing.get_args(hints[name]) if t is not type(None)), hints[name])
        if kind is bool:
            argv.append("--" + dest.replace("_", "-"))
            expected[name] = True
            continue
        value = _flag_value(fields[name], kind)
        if command == "general-distill" and name == "objective":
            value = "tinybert"
        argv += ["--" + dest.replace("_", "-"), str(value)]
        expected[name] = value
    cfg = cli._train_config(cls, cli.build_parser().parse_args(argv), dict(over), flags)
    got = {name: getattr(cfg, name) for name in expected}
    assert got == expected
    assert all(type(got[n]) is type(expected[n]) for n in expected)


def test_teacher_cache_flag(tmp_path):
    args = cli.build_parser().parse_args(["distill", "--output-dir", "o", "--teacher", "t", "--teacher-cache",
                                          str(tmp_path / "cache")])
    assert cli._train_config(DistillConfig, args, {}, cli.DISTILL_FLAGS).teacher_cache == str(tmp_path / "cache")


def test_boolean_flags_turn_a_file_setting_off_too():
    args = cli.build_parser().parse_args(["distill", "--output-dir", "o", "--teacher", "t", "--no-drop-last"])
    cfg = cli._train_config(DistillConfig, args, {"drop_last": True}, cli.DISTILL_FLAGS)
    assert cfg.drop_last is False
