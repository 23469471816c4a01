"""The catalogue of bad inputs in docs/errors.md, one test per row: every row of the table is a case here and
every case a row there (checked), each raising the library's own error with a message naming the problem."""
import os
import re

import pytest
import torch
from tiny_bert import (  # noqa: F401 (fixture)
    one_thread,
    tiny_bert,
    tiny_tokenizer,
    tokenized_dataset,
    write_mrpc,
)

import mlkd_fast as mf
from mlkd_fast.cli import main
from mlkd_fast.errors import InputError, InputTypeError, MLKDError

pytestmark = pytest.mark.usefixtures("one_thread")
DOC = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "docs", "errors.md")


@pytest.fixture
def env(tmp_path):
    teacher = tmp_path / "teacher"
    tiny_bert(layers=2).save_pretrained(teacher)
    tiny_tokenizer(str(teacher)).save_pretrained(teacher)
    broken = tmp_path / "broken"
    broken.mkdir()
    (broken / "config.json").write_text("{not json")
    return {"tmp": tmp_path, "teacher": str(teacher), "broken": str(broken), "glue": write_mrpc(str(tmp_path / "glue"))}


def r(*shape, dtype=torch.float32):
    return torch.randn(*shape, dtype=dtype)


def cli(e, *argv):
    """Runs the CLI, which must exit 2; returns what it printed to stderr through the MLKDError it turned into."""
    argv = [a.format(**e) for a in argv]
    return lambda: main(argv)


def _distill(e, **kw):
    teacher = tiny_bert(layers=2)
    student = kw.pop("student", None) or mf.build_student(teacher, 1, layer_map=(2,))
    args = dict(config=mf.DistillConfig(device="cpu", splits=4), output_dir=str(e["tmp"] / "out"), backend="torch",
                progress=False)
    args.update(kw)
    return lambda: mf.distill(teacher, student, args.pop("train", tokenized_dataset(8)), **args)


def _file(path, data: bytes) -> str:
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with open(path, "wb") as f:
        f.write(data)
    return str(path)


def _mrpc_model(e) -> str:
    """The env teacher saved as a model recorded for MRPC (as finetune and distill save theirs)."""
    model = tiny_bert(layers=2)
    model.config.finetuning_task = "mrpc"
    folder = e["tmp"] / "mrpc_model"
    model.save_pretrained(folder)
    tiny_tokenizer(str(folder)).save_pretrained(folder)
    return str(folder)


def _truncated_teacher(e) -> str:
    folder = e["tmp"] / "truncated"
    tiny_bert(layers=2).save_pretrained(folder)
    tiny_tokenizer(str(folder)).save_pretrained(folder)
    weights = folder / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[:100])
    return str(folder)


def _locked(e) -> str:
    import socket

    (e["tmp"] / "o.lock").write_text(f"{os.getppid()} {socket.gethostname()}\n")  # a live process, not this one
    return str(e["tmp"] / "o")


def _with(e, **paths):
    """The env with extra {names} for cli() argument templates."""
    return dict(e, **paths)


def _renamed_layernorm():
    """A BERT whose embedding LayerNorm has another name: the BERT adapter cannot find it."""
    model = tiny_bert(layers=1)
    model.bert.embeddings.norm = model.bert.embeddings.LayerNorm
    del model.bert.embeddings.LayerNorm
    return model


# id -> (what is called, exception type, message pattern)
CASES = {
    "op-rank": (lambda e: lambda: mf.relation_kl(r(2, 5), r(2, 5, 4), 2), InputError, "teacher must be 3-D"),
    "op-splits": (lambda e: lambda: mf.relation_kl(r(2, 5, 6), r(2, 5, 4), 4), InputError, "not divisible by splits=4"),
    "op-mask-dtype": (lambda e: lambda: mf.relation_kl(r(1, 3, 4), r(1, 3, 4), 2, torch.ones(1, 3)), InputTypeError,
                      "mask must be a bool or integer"),
    "op-labels": (lambda e: lambda: mf.sample_contrastive(r(4, 3), r(4, 3), torch.zeros(4)), InputTypeError,
                  "labels must be an integer"),
    "op-temperature": (lambda e: lambda: mf.sample_contrastive(r(4, 3), r(4, 3), temperature=0.0), InputError,
                       "temperature must be a finite number > 0"),
    "op-reduction": (lambda e: lambda: mf.soft_cross_entropy(r(4, 3), r(4, 3), reduction="sum"), InputError,
                     "reduction must be one of"),
    "op-backend": (lambda e: lambda: mf.relation_kl(r(1, 3, 4), r(1, 3, 4), 2, backend="cuda"), InputError,
                   "backend must be one of"),
    "student-heads": (lambda e: lambda: mf.build_student(tiny_bert(), 2, num_heads=3), InputError,
                      "num_heads=3 does not divide hidden_size=32"),
    "student-width": (lambda e: lambda: mf.build_student(tiny_bert(), 2, hidden_size=16), InputError,
                      "init='teacher' copies teacher weights and needs the teacher's widths"),
    "config-field": (lambda e: lambda: mf.DistillConfig(batch_size=0).validate(), InputError, "batch_size must be >= 1"),
    "distill-self": (lambda e: _distill(e, student="self"), InputError, "student is the teacher"),
    "distill-positions": (lambda e: _distill(e, config=mf.DistillConfig(device="cpu", splits=4, max_seq_length=512)),
                          InputError, "longer than the 128 positions"),
    "distill-labels": (lambda e: _distill(e, train=tokenized_dataset(8, num_labels=3)), InputError,
                       r"label 2 is outside 0\.\.1"),
    "distill-stages": (lambda e: _distill(e, stages=(2, 1)), InputError, "stages must be"),
    "distill-resume-empty": (lambda e: _distill(e, resume=True), InputError, "holds no checkpoint"),
    "finetune-config-type": (lambda e: lambda: mf.finetune(tiny_bert(), tokenized_dataset(8), config={"epochs": 1},
                                                           output_dir=str(e["tmp"] / "o")), InputTypeError,
                             "config must be a FinetuneConfig"),
    "evaluate-batch": (lambda e: lambda: mf.evaluate(tiny_bert(), tokenized_dataset(4), batch_size=0), InputError,
                       "batch_size must be >= 1"),
    "evaluate-latency": (lambda e: lambda: mf.evaluate(tiny_bert(), tokenized_dataset(4), latency_batches=-1), InputError,
                         "latency_batches must be >= 0"),
    "load-task": (lambda e: lambda: mf.load_split("mrcp", "train", data_dir=e["glue"]), InputError, "unknown task 'mrcp'"),
    "load-model": (lambda e: lambda: mf.load_for_task(e["broken"], 2), InputError, "holds no readable model config"),
    "cli-output-unwritable": (lambda e: cli(e, "finetune", "--task", "mrpc", "--data-dir", "{glue}", "--model", "{teacher}",
                                            "--output-dir", "{teacher}/config.json/out"), InputError, "cannot be written"),
    "cli-broken-teacher": (lambda e: cli(e, "distill", "--task", "mrpc", "--data-dir", "{glue}", "--teacher", "{broken}",
                                         "--student-layers", "1", "--output-dir", "{tmp}/o"), InputError,
                           "holds no readable model config"),
    "cli-threads": (lambda e: cli(e, "evaluate", "--task", "mrpc", "--data-dir", "{glue}", "--model", "{teacher}",
                                  "--threads", "-2"), InputError, "threads must be an int >= 1"),
    "cli-json-folder": (lambda e: cli(e, "evaluate", "--task", "mrpc", "--data-dir", "{glue}", "--model", "{teacher}",
                                      "--json", "{tmp}/missing/x.json"), InputError, "does not exist"),
    "cli-batch-zero": (lambda e: cli(e, "evaluate", "--task", "mrpc", "--data-dir", "{glue}", "--model", "{teacher}",
                                     "--batch-size", "0"), InputError, "batch_size must be >= 1"),
    "cli-section-type": (lambda e: cli(e, "distill", "--config", "{tmp}/distill5.yaml", "--data-dir", "{glue}",
                                       "--teacher", "{teacher}", "--output-dir", "{tmp}/o"), InputError,
                         "config 'distill' section must be a mapping"),
    "objective-unknown": (lambda e: lambda: mf.DistillConfig(objective="distilbert").validate(), InputError,
                          "objective must be one of"),
    "tinybert-heads": (lambda e: _distill(e, config=mf.DistillConfig(objective="tinybert", device="cpu", splits=4),
                                          student=mf.build_student(tiny_bert(layers=2), 1, num_heads=2, layer_map=(2,))),
                       InputError, "teacher has 4 heads and the student 2"),
    "encoder-layout": (lambda e: lambda: mf.capture_features(_renamed_layernorm(), {}), InputTypeError,
                       r"module base_model\.embeddings\.LayerNorm not found.*register_encoder"),
    "general-corpus": (lambda e: lambda: mf.general_distill(tiny_bert(), mf.build_student(tiny_bert(), 2),
                                                            [str(e["tmp"] / "nothing.txt")],
                                                            tokenizer=tiny_tokenizer(str(e["tmp"])),
                                                            config=mf.DistillConfig(splits=4, device="cpu"),
                                                            output_dir=str(e["tmp"] / "gd")),
                       InputError, "neither a file nor a folder"),
    "cli-squad-data-dir": (lambda e: cli(e, "distill", "--task", "squad", "--data-dir", "{glue}", "--teacher", "{teacher}",
                                         "--student-layers", "1", "--output-dir", "{tmp}/o"), InputError,
                           "reads SQuAD JSON files"),
    "cli-stages-type": (lambda e: cli(e, "distill", "--config", "{tmp}/stages12.yaml", "--data-dir", "{glue}",
                                      "--teacher", "{teacher}", "--student-layers", "1", "--output-dir", "{tmp}/o"),
                        InputError, "stages must be a list"),
    "cli-tsv-fields": (lambda e: cli(_with(e, bad=_file(e["tmp"] / "t.tsv", b"Quality\t#1 ID\t#2 ID\t#1 String\t#2 String\n"
                                                                          b"1\t1\t2\ta b\n")),
                                     "distill", "--task", "mrpc", "--train-file", "{bad}", "--dev-file", "{bad}",
                                     "--teacher", "{teacher}", "--student-layers", "1", "--output-dir", "{tmp}/o"),
                       InputError, r"t\.tsv, line 2: expected 5 tab-separated fields, got 4"),
    "cli-other-task": (lambda e: cli(_with(e, model=_mrpc_model(e), rte=_file(e["tmp"] / "rte" / "dev.tsv",
                                                                               b"index\tsentence1\tsentence2\tlabel\n"
                                                                               b"0\tgood film\tthe film\tentailment\n")),
                                     "evaluate", "--task", "rte", "--dev-file", "{rte}", "--model", "{model}"), InputError,
                       r"was trained for task 'mrpc'.*--allow-other-task"),
    "cli-corpus-binary": (lambda e: cli(_with(e, corpus=_file(e["tmp"] / "c.bin", bytes(range(256)))), "general-distill",
                                        "--teacher", "{teacher}", "--corpus", "{corpus}", "--student-layers", "1",
                                        "--splits", "4", "--output-dir", "{tmp}/o"), InputError,
                          r"c\.bin' is binary, not text"),
    "cli-corpus-empty": (lambda e: cli(_with(e, corpus=_file(e["tmp"] / "c.txt", b"\n  \n")), "general-distill",
                                       "--teacher", "{teacher}", "--corpus", "{corpus}", "--student-layers", "1",
                                       "--splits", "4", "--output-dir", "{tmp}/o"), InputError, "the corpus holds no text"),
    "cli-truncated-weights": (lambda e: cli(_with(e, bad=_truncated_teacher(e)), "distill", "--task", "mrpc", "--data-dir",
                                            "{glue}", "--teacher", "{bad}", "--student-layers", "1", "--output-dir",
                                            "{tmp}/o"), InputError, r"could not be loaded: SafetensorError"),
    "cli-cache-file": (lambda e: cli(_with(e, bad=_file(e["tmp"] / "cache.txt", b"x")), "distill", "--task", "mrpc",
                                     "--data-dir", "{glue}", "--teacher", "{teacher}", "--student-layers", "1",
                                     "--teacher-cache", "{bad}", "--output-dir", "{tmp}/o"), InputError,
                       r"teacher_cache .*cache\.txt' is a file"),
    "cli-locked": (lambda e: cli(_with(e, out=_locked(e)), "distill", "--task", "mrpc", "--data-dir", "{glue}",
                                 "--teacher", "{teacher}", "--student-layers", "1", "--output-dir", "{out}"), InputError,
                   r"is in use by another run \(pid"),
}


def _doc_rows():
    rows = {}
    for line in open(DOC, encoding="utf-8"):
        m = re.match(r"\|\s*`([\w-]+)`\s*\|(.*)\|\s*`(\w+)`\s*\|", line)
        if m:
            rows[m.group(1)] = m.group(3)
    return rows


def test_the_table_and_the_tests_list_the_same_cases():
    rows = _doc_rows()
    assert sorted(rows) == sorted(CASES), f"only in docs: {sorted(set(rows) - set(CASES))}, only here: {sorted(set(CASES) - set(rows))}"
    for case, (_, exc, _) in CASES.items():
        assert rows[case] == exc.__name__, f"{case}: docs say {rows[case]}, the test expects {exc.__name__}"


@pytest.mark.parametrize("case", sorted(CASES))
def test_bad_input(env, case, capsys):
    (env["tmp"] / "distill5.yaml").write_text("task: mrpc\ndistill: 5\n")
    (env["tmp"] / "stages12.yaml").write_text("task: mrpc\nstages: 12\ndistill: {splits: 4, device: cpu}\n")
    make, exc, pattern = CASES[case]
    call = make(env)
    if case == "distill-self":
        teacher = tiny_bert(layers=2)
        call = lambda: mf.distill(teacher, teacher, tokenized_dataset(8), output_dir=str(env["tmp"] / "o"))  # noqa: E731
    if case.startswith("cli-"):
        assert call() == 2
        err = capsys.readouterr().err
        last = err.strip().splitlines()[-1]  # (transformers may print load reports or bars before it)
        assert last.startswith("mlkd-fast: error:") and re.search(pattern, last), err
        assert "Traceback" not in err
        out = env["tmp"] / "o"
        assert not out.exists() or not any(out.iterdir()), f"{case} wrote into the output folder"
        return
    with pytest.raises(exc, match=pattern):
        call()


def test_errors_that_are_not_the_users_keep_their_traceback(monkeypatch):
    from mlkd_fast import cli

    def bug(args):
        raise ZeroDivisionError("a bug, not a user error")

    monkeypatch.setitem(cli.COMMANDS, "evaluate", bug)
    with pytest.raises(ZeroDivisionError):
        main(["evaluate", "--task", "mrpc", "--model", "x"])
    assert issubclass(InputError, (MLKDError, ValueError)) and issubclass(InputTypeError, (MLKDError, TypeError))


def test_truncated_model_weights_are_one_clear_error(tmp_path):
    import os

    from tiny_bert import tiny_bert

    from mlkd_fast.errors import InputError
    from mlkd_fast.train.models import load_for_task

    tiny_bert(layers=1, hidden=32, heads=2).save_pretrained(tmp_path / "m")
    weights = tmp_path / "m" / "model.safetensors"
    data = weights.read_bytes()
    weights.write_bytes(data[: len(data) // 2])
    with pytest.raises(InputError, match=r"SafetensorError"):
        load_for_task(os.fspath(tmp_path / "m"), 2, require_head=True, role="--teacher")
