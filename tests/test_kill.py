"""Kill a distillation with SIGKILL again and again (at random steps, inside a checkpoint write, inside a model
save) and resume it each time: the final student equals the uninterrupted run's, bitwise.

Every run is a fresh `python -m mlkd_fast` process on one thread (the fused kernels' sums depend on the
thread count), so this is what a user's killed job and its `--resume` do.
"""
import json
import os
import random
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


def test_killed_and_resumed_runs_end_with_the_uninterrupted_student(job):
    tmp, args = job
    ref = _run(args, tmp / "ref")
    assert ref.returncode == 0, ref.stderr
    total = _train_steps(tmp / "ref")  # 12 steps: 24 rows / 8 per batch x 4 epochs
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
    a, b = _student(tmp / "ref"), _student(out)
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    steps = [json.loads(line)["step"] for line in open(out / "metrics.jsonl") if '"kind": "train"' in line]
    assert steps == list(range(1, total + 1))  # each step logged once, replays included
    assert not [f for f in os.listdir(out) if f.endswith((".tmp", ".old"))] and not os.path.exists(str(out) + ".lock")
