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
