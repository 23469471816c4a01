"""A loss term is one unit: a term with a setting, registered here and nowhere else, runs through the config,
the CLI (--set), the teacher cache, `distill` and `MLKDTrainer` without any other module knowing its name.
Also: each built-in term's settings are checked where they are declared, and the earlier flat config fields
still mean what they meant."""
import math
import os
from dataclasses import dataclass

import pytest
import torch
from tiny_bert import one_thread, tiny_bert, tiny_config, tiny_tokenizer, tokenized_dataset, write_mrpc  # noqa: F401

from mlkd_fast import DistillConfig, build_student, distill
from mlkd_fast.errors import InputError, InputTypeError
from mlkd_fast.train import objectives
from mlkd_fast.train.checks import check_float
from mlkd_fast.train.config import OBJECTIVES, config_from_dict

pytestmark = pytest.mark.usefixtures("one_thread")
CALLS = []  # (scale, whether the teacher's features came from the cache) of every toy-term call


@dataclass(frozen=True)
class ToySettings(objectives.TermSettings):
    scale: float = 1.0

    def validate(self, term):
        check_float(f"{term}.scale", self.scale)


def _toy(t, s, ctx, opts):
    """scale * MSE of the last hidden states' [CLS], teacher layer layer_map[-1] (reads a cached feature)."""
    CALLS.append((opts.scale, any(h is None for h in t.hidden)))  # a cache holds only the layers read
    return opts.scale * objectives.masked_mse(s.hidden[-1][:, 0], t.hidden[ctx.layer_map[-1]][:, 0], None)


@pytest.fixture
def toy_term():
    """Registers the term "toy" and an objective "toy" (stage 1: mlkd's, plus toy; stage 2: kd); removed after."""
    objectives.register_term("toy", unit="sample", settings=ToySettings,
                             cached=lambda opts, plan: [f"hid{plan.layer_map[-1]}"])(_toy)
    OBJECTIVES["toy"] = objectives.Objective({1: {"toy": 1.0, "ffn": 1.0}, 2: {"kd": 1.0}}, {"toy": {"scale": 2.0}})
    CALLS.clear()
    yield
    del objectives.TERMS["toy"], OBJECTIVES["toy"]


def test_settings_layer_defaults_objective_and_config(toy_term):
    assert config_from_dict(DistillConfig, {"objective": "toy"}).term_settings()["toy"] == ToySettings(2.0)
    cfg = config_from_dict(DistillConfig, {"objective": "toy", "terms": {"toy": {"scale": 3.0}}})
    assert cfg.term_settings()["toy"].scale == 3.0 and cfg.term_settings()["kd"].reduction == "mean"
    with pytest.raises(InputError, match=r"toy\.scale must be a finite number > 0"):
        DistillConfig(objective="toy", terms={"toy": {"scale": -1.0}}).validate()
    with pytest.raises(InputError, match=r"toy\.scael: not a setting of loss term 'toy'; its settings: \['scale'\]"):
        DistillConfig(objective="toy", terms={"toy": {"scael": 1.0}}).validate()
    with pytest.raises(InputError, match=r"terms: 'toi' is not a loss term"):
        DistillConfig(terms={"toi": {}}).validate()


def test_builtin_settings_and_earlier_field_names():
    kd = DistillConfig(objective="kd").term_settings()["kd"]
    assert (kd.temperature, kd.reduction) == (1.0, "batchmean")  # Hinton's: the objective's own setting
    assert DistillConfig().term_settings()["kd"].reduction == "mean"  # the authors' MLKD code
    old = config_from_dict(DistillConfig, {"kd_temperature": 2.0, "sc_projection": "ffn", "minilm_teacher_layer": 3,
                                           "terms": {"sc": {"temperature": 0.1}}})
    assert old.terms == {"kd": {"temperature": 2.0}, "sc": {"projection": "ffn", "temperature": 0.1},
                         "qkv": {"layer": 3}}
    authors = config_from_dict(DistillConfig, {"recipe": "authors", "terms": {"sc": {"temperature": 0.2}}})
    sc = authors.term_settings()["sc"]
    assert (sc.projection, sc.regression_positives, sc.temperature) == ("ffn", "equal_scores", 0.2)
    for bad, message in (({"kd": {"reduction": "sum"}}, r"kd\.reduction must be one of \['mean', 'batchmean'\]"),
                         ({"sc": {"projection": "new"}}, r"sc\.projection must be one of"),
                         ({"qkv": {"layer": 0}}, r"qkv\.layer must be >= 1"),
                         ({"kd": 2.0}, r"terms\.kd must be a mapping")):
        with pytest.raises((InputError, InputTypeError), match=message):
            DistillConfig(terms=bad).validate()


def test_a_new_term_runs_through_distill_and_the_teacher_cache(toy_term, tmp_path):
    teacher = tiny_bert(layers=4, hidden=32, heads=4)
    train, dev = tokenized_dataset(16), tokenized_dataset(8, seed=1)
    kw = dict(stage1_epochs=1, stage2_epochs=1, batch_size=8, splits=4, device="cpu")
    runs = {}
    for name, extra in (("plain", {}), ("cached", {"teacher_cache": str(tmp_path / "cache")})):
        torch.manual_seed(1)
        student = build_student(teacher, 2, num_heads=2)
        cfg = config_from_dict(DistillConfig, dict(kw, objective="toy", **extra))
        CALLS.clear()
        distill(teacher, student, train, eval_data=dev, config=cfg, output_dir=str(tmp_path / name), overwrite=True,
                progress=False)
        runs[name] = (list(CALLS), {k: v.clone() for k, v in student.state_dict().items()})
    plain, cached = runs["plain"], runs["cached"]
    assert len(plain[0]) == 2 and all(scale == 2.0 for scale, _ in plain[0])  # 2 stage-1 steps, the objective's 2.0
    assert all(from_cache for _, from_cache in cached[0]) and not any(from_cache for _, from_cache in plain[0])
    folder = next(os.scandir(tmp_path / "cache")).path
    assert os.path.isfile(os.path.join(folder, "hid4.npy"))  # the toy term's feature, named by the term itself
    for k, v in plain[1].items():  # the cached teacher's features are the teacher's: the same training
        torch.testing.assert_close(cached[1][k], v, rtol=1e-5, atol=1e-6)


def test_a_new_term_runs_through_the_cli_with_its_setting(toy_term, tmp_path, capsys):
    import json

    from transformers import BertModel

    from mlkd_fast.cli import main

    torch.manual_seed(0)
    pretrained = tmp_path / "pretrained"
    BertModel(tiny_config(layers=4, hidden=32, heads=4)).save_pretrained(pretrained)
    tiny_tokenizer(str(pretrained)).save_pretrained(pretrained)
    glue = write_mrpc(str(tmp_path / "glue"), n_train=16, n_dev=8)
    common = ["--data-dir", glue, "--task", "mrpc", "--batch-size", "8", "--max-seq-length", "16", "--device", "cpu",
              "--no-progress"]
    assert main(["finetune", "--model", str(pretrained), "--output-dir", str(tmp_path / "t"), "--epochs", "1"] + common) == 0
    argv = ["distill", "--teacher", str(tmp_path / "t" / "model"), "--output-dir", str(tmp_path / "s"), "--objective",
            "toy", "--stage1-epochs", "1", "--stage2-epochs", "1", "--splits", "4", "--student-layers", "2",
            "--student-heads", "2", "--set", "toy.scale=0.5", "--set", "kd.temperature=2"] + common
    assert main(argv) == 0
    # 4 teacher heads into 2: the default start is the measured best, grouped, said on stdout
    assert "4 teacher heads re-split into 2: head start 'grouped' (--head-init auto)" in capsys.readouterr().out
    assert CALLS and all(scale == 0.5 for scale, _ in CALLS)
    saved = json.load(open(tmp_path / "s" / "distill_config.json"))
    assert saved["terms"] == {"toy": {"scale": 0.5}, "kd": {"temperature": 2}}
    capsys.readouterr()
    bad = [a.replace("toy.scale=0.5", "toy.scale=fast") for a in argv]
    assert main(bad + ["--overwrite"]) == 2
    assert "toy.scale must be a number, got str ('fast')" in capsys.readouterr().err
    assert main(argv + ["--set", "toy=1", "--overwrite"]) == 2
    assert "--set 'toy=1': expected TERM.SETTING=VALUE" in capsys.readouterr().err


def test_a_new_term_runs_in_mlkd_trainer(toy_term, tmp_path):
    from transformers import DataCollatorWithPadding, PreTrainedTokenizerFast, TrainingArguments
    from tokenizers import Tokenizer, models

    from mlkd_fast.hf import MLKDTrainer

    teacher = tiny_bert(layers=4, hidden=32, heads=4)
    torch.manual_seed(1)
    student = build_student(teacher, 2, num_heads=2)
    tok = PreTrainedTokenizerFast(tokenizer_object=Tokenizer(models.WordLevel({"[PAD]": 0, "[UNK]": 1}, unk_token="[UNK]")),
                                  pad_token="[PAD]")
    args = TrainingArguments(output_dir=str(tmp_path), per_device_train_batch_size=8, max_steps=4, logging_steps=1,
                             report_to=[], use_cpu=True, save_strategy="no", disable_tqdm=True)
    cfg = DistillConfig(objective="toy", splits=4, stage1_epochs=1, stage2_epochs=1, terms={"toy": {"scale": 4.0}})
    trainer = MLKDTrainer(model=student, teacher=teacher, args=args, train_dataset=tokenized_dataset(16),
                          data_collator=DataCollatorWithPadding(tok), distill_config=cfg)
    trainer.train()
    logged = [h["mlkd/toy"] for h in trainer.state.log_history if "mlkd/toy" in h]
    assert len(logged) == 2 and all(math.isfinite(v) for v in logged)
    assert CALLS and all(scale == 4.0 for scale, _ in CALLS)
