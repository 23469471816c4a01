"""Kill a distillation with SIGKILL again and again (at random steps, inside a checkpoint write, inside a model
save) and resume it each time: the final student equals the uninterrupted run's, bitwise.

Every run is a fresh `python -m mlkd_fast` process on one thread (the fused kernels' sums depend on the
thread count), so this is what a user's killed job and its `--resume` do.
"""
import json
import os
import random
import signal
import subprocess
import sys
import time

import pytest
import torch
from tiny_bert import tiny_config, tiny_tokenizer, write_mrpc

# Run as the child process: arm a SIGKILL at the n-th visit of a fault point, then run the CLI.
CHILD = """
import os, signal, sys
from mlkd_fast.train import atomic
point, nth = sys.argv[1], int(sys.argv[2])
seen = [0]
def hook(name):
    if name == point:
        seen[0] += 1
        if seen[0] == nth:
            os.kill(os.getpid(), signal.SIGKILL)
atomic.FAULT_HOOK = hook if point != "-" else None
from mlkd_fast.cli import main
sys.exit(main(sys.argv[3:]))
"""


@pytest.fixture(scope="module")
def job(tmp_path_factory):
    from transformers import BertForSequenceClassification

    tmp = tmp_path_factory.mktemp("kill")
    torch.manual_seed(0)
    teacher = BertForSequenceClassification(tiny_config(layers=4, hidden=32, heads=4))
    teacher.save_pretrained(tmp / "teacher")
    tiny_tokenizer(str(tmp / "teacher")).save_pretrained(tmp / "teacher")
    glue = write_mrpc(str(tmp / "glue"), n_train=24, n_dev=8)
    args = ["distill", "--task", "mrpc", "--data-dir", glue, "--teacher", str(tmp / "teacher"), "--student-layers", "2",
            "--student-heads", "2", "--stage1-epochs", "2", "--stage2-epochs", "2", "--batch-size", "8", "--splits", "4",
            "--max-seq-length", "16", "--checkpoint-every", "1", "--device", "cpu", "--no-progress"]
    return tmp, args


@pytest.fixture(scope="module")
def reference(job):
    """The uninterrupted run, once: its student and its number of training steps."""
    tmp, args = job
    res = _run(args, tmp / "ref")
    assert res.returncode == 0, res.stderr
    return _student(tmp / "ref"), _train_steps(tmp / "ref")


def _run(args, out, point="-", nth=0, resume=False, background=False):
    env = dict(os.environ, OMP_NUM_THREADS="1", MKL_NUM_THREADS="1", HF_HUB_OFFLINE="1", TRANSFORMERS_VERBOSITY="error")
    cmd = [sys.executable, "-c", CHILD, point, str(nth), *args, "--output-dir", str(out)] + (["--resume"] if resume else [])
    if background:
        return subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    return subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300)


def _train_steps(out):
    try:
        with open(os.path.join(out, "metrics.jsonl")) as f:
            return sum('"kind": "train"' in line for line in f)
    except FileNotFoundError:
        return 0


def _student(out):
    from safetensors.torch import load_file

    return load_file(os.path.join(out, "student", "model.safetensors"))


def test_killed_and_resumed_runs_end_with_the_uninterrupted_student(job, reference):
    tmp, args = job
    a, total = reference  # 12 steps: 24 rows / 8 per batch x 4 epochs
    out, rng, kills, resume = tmp / "run", random.Random(0), 0, False
    # three kills at random steps, then one inside a checkpoint write and one inside a model save
    plan = [("-", 0)] * 3 + [("state:written-tmp", 2), ("model:saved-tmp", 1)]
    for point, nth in plan:
        if point == "-":
            proc = _run(args, out, resume=resume, background=True)
            target = _train_steps(out) + rng.randint(1, 3)
            while proc.poll() is None and _train_steps(out) < target:
                time.sleep(0.01)
            proc.kill()
            proc.wait()
            killed = proc.returncode == -9
        else:
            res = _run(args, out, point, nth, resume=resume)
            killed = res.returncode == -9
        kills += killed
        resume = resume or os.path.exists(os.path.join(out, "checkpoint", "state.pt"))
    final = _run(args, out, resume=resume)
    assert final.returncode == 0, final.stderr
    assert kills >= 3, "the runs finished before they could be killed"
    b = _student(out)
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    steps = [json.loads(line)["step"] for line in open(out / "metrics.jsonl") if '"kind": "train"' in line]
    assert steps == list(range(1, total + 1))  # each step logged once, replays included
    assert not [f for f in os.listdir(out) if f.endswith((".tmp", ".old"))] and not os.path.exists(str(out) + ".lock")


def test_ctrl_c_writes_a_checkpoint_and_prints_the_resume_command(job, reference):
    tmp, args = job
    out = tmp / "sigint"
    proc = _run(args, out, background=True)
    while proc.poll() is None and _train_steps(out) < 2:
        time.sleep(0.01)
    proc.send_signal(signal.SIGINT)
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 130, err
    assert "SIGINT received: stopped after global step" in err and "resume with: mlkd-fast distill" in err, err
    assert "Traceback" not in err
    assert _run(args, out, resume=True).returncode == 0
    b = _student(out)
    assert all(torch.equal(reference[0][k], b[k]) for k in b)
