"""`mlkd-fast` finetune -> distill -> evaluate on a tiny BERT and a GLUE-format directory the test writes."""
import json
import os
import re

import pytest
from tiny_bert import one_thread, tiny_bert, tiny_config, tiny_tokenizer, write_mrpc  # noqa: F401 (fixture)

from mlkd_fast.cli import main

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture
def setup(tmp_path):
    """A 'pretrained' tiny BERT without a task head (as the real teacher is shipped), a GLUE dir, a config."""
    import torch
    from transformers import BertModel

    pretrained = tmp_path / "pretrained"
    torch.manual_seed(0)
    BertModel(tiny_config(layers=4, hidden=32, heads=4)).save_pretrained(pretrained)
    tiny_tokenizer(str(pretrained)).save_pretrained(pretrained)
    glue = write_mrpc(str(tmp_path / "glue"), n_train=16, n_dev=8)
    config = tmp_path / "run.yaml"
    config.write_text(
        "task: mrpc\n"
        "finetune: {epochs: 2, batch_size: 8, learning_rate: 1.0e-3, max_seq_length: 16, device: cpu}\n"
        "distill: {stage1_epochs: 1, stage2_epochs: 2, batch_size: 8, splits: 4, max_seq_length: 16, checkpoint_every: 1, device: cpu}\n"
        "student: {num_layers: 2, num_heads: 2, init: teacher}\n"
        "evaluate: {batch_size: 4, latency_batches: 2}\n"
    )
    return tmp_path, str(pretrained), glue, str(config)


def test_finetune_distill_evaluate_end_to_end(setup, capsys):
    from transformers import AutoModelForSequenceClassification

    tmp, pretrained, glue, config = setup
    teacher_out, student_out = str(tmp / "teacher"), str(tmp / "student")
    assert main(["finetune", "--config", config, "--data-dir", glue, "--model", pretrained, "--output-dir", teacher_out, "--no-progress"]) == 0
    assert "fine-tuned teacher" in capsys.readouterr().out
    teacher_dir = os.path.join(teacher_out, "model")
    assert os.path.isfile(os.path.join(teacher_dir, "tokenizer_config.json"))

    assert main(["distill", "--config", config, "--data-dir", glue, "--teacher", teacher_dir, "--output-dir", student_out,
                 "--no-progress"]) == 0
    out = capsys.readouterr().out
    assert "stage 1 epoch 1" in out and "stage 2 epoch 2" in out and "best dev accuracy" in out
    student_dir = os.path.join(student_out, "student")
    student = AutoModelForSequenceClassification.from_pretrained(student_dir)
    assert student.config.num_hidden_layers == 2 and student.config.num_attention_heads == 2
    logs = [json.loads(l) for l in open(os.path.join(student_out, "metrics.jsonl"))]
    assert {l["kind"] for l in logs} == {"train", "epoch"} and all("loss" in l for l in logs if l["kind"] == "train")
    assert os.path.isfile(os.path.join(student_out, "checkpoint", "state.pt"))
    assert not [f for f in os.listdir(os.path.join(student_out, "checkpoint")) if ".tmp" in f]  # atomic writes leave no temp files

    # resuming a finished run changes nothing and reports the same result
    assert main(["distill", "--config", config, "--data-dir", glue, "--teacher", teacher_dir, "--output-dir", student_out,
                 "--resume", "--no-progress"]) == 0
    assert capsys.readouterr().out == out

    result = str(tmp / "cmp.json")
    assert main(["evaluate", "--config", config, "--data-dir", glue, "--model", teacher_dir, "--model", student_dir, "--json", result]) == 0
    table = capsys.readouterr().out
    assert "ms/batch" in table and "f1" in table
    rows = json.load(open(result))["results"]
    assert [r["model"] for r in rows] == [teacher_dir, student_dir]
    assert rows[1]["parameters"] < rows[0]["parameters"]
    assert all(0 <= r["f1"] <= 1 and r["latency_ms_per_batch"] > 0 and r["latency_batches"] == 2 for r in rows)
    # the student's line states its retention of the teacher's (the first model's) metrics
    student_line = next(line for line in table.splitlines() if line.startswith(student_dir))
    expected = f"{100 * rows[1]['accuracy'] / rows[0]['accuracy']:.1f}" if rows[0]["accuracy"] else "-"
    assert "accuracy retention %" in table and expected in student_line.split()


def test_flags_override_the_config_file(setup, capsys):
    tmp, pretrained, glue, config = setup
    out = str(tmp / "t")
    assert main(["finetune", "--config", config, "--data-dir", glue, "--model", pretrained, "--output-dir", out, "--epochs", "1",
                 "--max-train-samples", "8", "--no-progress"]) == 0
    saved = json.load(open(os.path.join(out, "finetune_config.json")))
    assert saved["epochs"] == 1 and saved["max_train_samples"] == 8 and saved["batch_size"] == 8 and saved["train_rows"] == 8


@pytest.mark.parametrize(
    "argv, message",
    [
        (["finetune", "--task", "mrcp"], "unknown task 'mrcp'"),
        (["finetune", "--task", "rte"], "has no RTE/ folder"),
        (["finetune", "--task", "mrpc", "--epochs", "0"], "epochs must be >= 1"),
        (["distill", "--task", "mrpc", "--teacher", "TEACHER", "--student-layers", "2", "--student-heads", "3"], "num_heads=3 does not divide"),
        (["distill", "--task", "mrpc", "--teacher", "TEACHER", "--student-layers", "2", "--layer-map", "1,5"], r"teacher layers in 1\.\.4"),
        (["distill", "--task", "mrpc", "--teacher", "TEACHER", "--student-layers", "2", "--splits", "5"], "splits=5 does not divide"),
        (["distill", "--task", "mrpc", "--teacher", "TEACHER", "--student-layers", "2", "--resume"], "holds no checkpoint"),
        (["distill", "--task", "mrpc", "--teacher", "PRETRAINED", "--student-layers", "2"], "has no classification head: fine-tune it first"),
        (["distill", "--task", "mrpc", "--teacher", "nowhere", "--student-layers", "2"],
         "--teacher 'nowhere' is neither a local directory nor a model the hub gave"),
        (["distill", "--task", "mrpc", "--teacher", "no/where/x", "--student-layers", "2"],
         "--teacher directory 'no/where/x' does not exist"),
        (["evaluate", "--task", "mrpc", "--model", "nowhere"], "model 'nowhere' is neither a local directory"),
    ],
)
def test_bad_input_exits_2_with_a_clear_message(setup, capsys, monkeypatch, argv, message):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")  # a hub id is not looked up (no waiting on a closed network)
    tmp, pretrained, glue, config = setup
    teacher = tmp / "teacher_ok"
    if "TEACHER" in argv:
        tiny_bert(layers=4, hidden=32, heads=4).save_pretrained(teacher)
        tiny_tokenizer(str(teacher)).save_pretrained(teacher)
    argv = [str(teacher) if a == "TEACHER" else pretrained if a == "PRETRAINED" else a for a in argv]
    out = tmp / "out"
    extra = ["--config", config, "--data-dir", glue] + (["--output-dir", str(out), "--no-progress"] if argv[0] != "evaluate" else [])
    assert main(argv + extra) == 2
    err = capsys.readouterr().err
    assert "mlkd-fast: error:" in err and re.search(message, err), err
    assert not (out / "checkpoint").exists()


def test_malformed_data_file_and_existing_output(setup, capsys):
    tmp, pretrained, glue, config = setup
    with open(os.path.join(glue, "MRPC", "dev.tsv"), "a") as f:
        f.write("1\tonly\tthree\n")
    assert main(["finetune", "--config", config, "--data-dir", glue, "--model", pretrained, "--output-dir", str(tmp / "o")]) == 2
    assert re.search(r"MRPC/dev\.tsv, line 10: expected 5 tab-separated fields, got 3", capsys.readouterr().err)
    used = tmp / "used"
    used.mkdir()
    (used / "notes.txt").write_text("mine")
    write_mrpc(glue)  # a clean file again
    assert main(["finetune", "--config", config, "--data-dir", glue, "--model", pretrained, "--output-dir", str(used)]) == 2
    assert "already holds files" in capsys.readouterr().err and (used / "notes.txt").read_text() == "mine"
    bad_cfg = tmp / "bad.yaml"
    bad_cfg.write_text("task: mrpc\nfinetune: {epocs: 2}\n")
    assert main(["finetune", "--config", str(bad_cfg), "--data-dir", glue, "--output-dir", str(tmp / "o2")]) == 2
    assert "unknown FinetuneConfig field(s) ['epocs']" in capsys.readouterr().err



def test_evaluate_api_single_model_and_list():
    from tiny_bert import tokenized_dataset

    from mlkd_fast import evaluate

    a, b = tiny_bert(layers=2), tiny_bert(layers=1, seed=1)
    one = evaluate(a, tokenized_dataset(16), task="mrpc", batch_size=4, latency_batches=1)  # 2 warm-up batches, 1 timed
    assert set(one) >= {"f1", "accuracy", "parameters", "latency_ms_per_batch"} and one["latency_batches"] == 1
    both = evaluate([a, b], tokenized_dataset(16), task="mrpc", batch_size=4, latency_batches=1)
    assert [r["f1"] for r in both][0] == one["f1"] and both[1]["parameters"] < both[0]["parameters"]


def test_version_and_env_say_what_runs_here(capsys):
    import mlkd_fast

    with pytest.raises(SystemExit) as exit_:
        main(["--version"])
    assert exit_.value.code == 0 and capsys.readouterr().out.strip() == f"mlkd-fast {mlkd_fast.__version__}"
    assert main(["env", "--json"]) == 0
    info = json.loads(capsys.readouterr().out)
    assert info["mlkd_fast"] == mlkd_fast.__version__ and info["backends"] == mlkd_fast.available_backends()
    assert info["cpp_isa"] in ("avx2", "base", None) and isinstance(info["torch_threads"], int)


def test_general_distill_then_distill_and_finetune_take_the_student(setup, capsys):
    from transformers import AutoModel

    tmp, pretrained, glue, config = setup
    corpus = tmp / "corpus.txt"
    corpus.write_text("good movie\nthe plot was not great\n\nbad film very awful\n" * 20)
    gd = str(tmp / "gd")
    assert main(["general-distill", "--teacher", pretrained, "--corpus", str(corpus), "--output-dir", gd,
                 "--student-layers", "2", "--student-hidden", "16", "--student-heads", "2",
                 "--student-intermediate", "32", "--init", "random", "--max-steps", "3", "--batch-size", "4",
                 "--splits", "4", "--max-seq-length", "16", "--device", "cpu", "--no-progress"]) == 0
    out = capsys.readouterr().out
    assert "general student (AutoModel)" in out and "ffn=" in out
    student = os.path.join(gd, "student")
    assert AutoModel.from_pretrained(student).config.hidden_size == 16
    # distill takes the task-agnostic student (a task head is added); finetune takes it as a pretrained model
    teacher = str(tmp / "teacher")
    assert main(["finetune", "--config", config, "--data-dir", glue, "--model", pretrained, "--output-dir", teacher,
                 "--no-progress"]) == 0
    no_shape = tmp / "no_shape.yaml"  # --student DIR and a student: section are exclusive
    no_shape.write_text("\n".join(line for line in open(config).read().splitlines() if not line.startswith("student:")))
    assert main(["distill", "--config", str(no_shape), "--data-dir", glue, "--teacher", os.path.join(teacher, "model"),
                 "--student", student, "--output-dir", str(tmp / "s"), "--stage1-epochs", "1", "--stage2-epochs", "1",
                 "--no-progress"]) == 0
    assert main(["finetune", "--config", config, "--data-dir", glue, "--model", student, "--output-dir",
                 str(tmp / "f"), "--epochs", "1", "--no-progress"]) == 0
    assert main(["general-distill", "--corpus", str(tmp / "missing.txt"), "--output-dir", str(tmp / "x"),
                 "--student-layers", "2", "--splits", "4", "--teacher", pretrained]) == 2
    assert "neither a file nor a folder" in capsys.readouterr().err


def test_a_locked_output_folder_is_refused_before_anything_loads(tmp_path, capsys):
    import subprocess
    import sys

    other = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        import socket

        out = tmp_path / "run"
        (tmp_path / "run.lock").write_text(f"{other.pid} {socket.gethostname()}\n")
        # the teacher does not exist: a run that checked it before taking the lock would say so instead
        assert main(["distill", "--task", "mrpc", "--data-dir", str(tmp_path), "--teacher", str(tmp_path / "none"),
                     "--output-dir", str(out), "--student-layers", "1"]) == 2
        assert "is in use by another run (pid" in capsys.readouterr().err
    finally:
        other.kill()


def test_a_hub_id_is_tried_and_offline_says_so(tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    glue = write_mrpc(str(tmp_path / "glue"), n_train=4, n_dev=4)
    assert main(["distill", "--task", "mrpc", "--data-dir", glue, "--teacher", "some-org/some-bert",
                 "--output-dir", str(tmp_path / "o"), "--student-layers", "1"]) == 2
    assert "is neither a local directory nor a model the hub gave (HF_HUB_OFFLINE is set" in capsys.readouterr().err
    assert main(["evaluate", "--task", "mrpc", "--data-dir", glue, "--model", "./not/here"]) == 2
    assert "--model directory './not/here' does not exist" in capsys.readouterr().err
