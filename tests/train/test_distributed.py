"""Data-parallel distillation with the launcher users run (torchrun, gloo on CPU), against one process on the
same global batch: the same per-step loss terms and the same student, within fp32 rounding (the ranks'
matmuls see 4-row shards instead of 8-row batches). Dropout is off so that both runs draw nothing random."""
import json
import os
import signal
import socket
import subprocess
import sys
import time

import pytest
import torch
from tiny_bert import tiny_config, tiny_tokenizer, write_mrpc

TOL = 2e-5


def _free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def job(tmp_path_factory):
    from transformers import BertForSequenceClassification

    tmp = tmp_path_factory.mktemp("ddp")
    cfg = tiny_config(layers=4, hidden=32, heads=4)
    cfg.hidden_dropout_prob = cfg.attention_probs_dropout_prob = 0.0
    cfg.initializer_range = 0.5  # a random BERT at 0.02 has near-uniform relations: L_MHA and L_SS would be ~0
    torch.manual_seed(0)
    BertForSequenceClassification(cfg).save_pretrained(tmp / "teacher")
    tiny_tokenizer(str(tmp / "teacher")).save_pretrained(tmp / "teacher")
    glue = write_mrpc(str(tmp / "glue"), n_train=24, n_dev=8)
    args = ["distill", "--task", "mrpc", "--data-dir", glue, "--teacher", str(tmp / "teacher"), "--student-layers", "2",
            "--student-heads", "2", "--init", "random", "--stage1-epochs", "1", "--stage2-epochs", "1", "--batch-size", "8",
            "--splits", "4",
            "--max-seq-length", "16", "--learning-rate", "1e-3", "--checkpoint-every", "1", "--device", "cpu",
            "--backend", "cpp", "--no-progress"]
    return tmp, args


def _cmd(ranks, launcher="torchrun"):
    if ranks == 1:
        return [sys.executable, "-m", "mlkd_fast"]
    if launcher == "accelerate":
        return [sys.executable, "-m", "accelerate.commands.launch", "--multi_gpu", "--num_processes", str(ranks),
                "--num_machines", "1", "--mixed_precision", "no", "--dynamo_backend", "no",
                "--main_process_port", str(_free_port()), "-m", "mlkd_fast"]
    return [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", str(ranks), "--master_addr", "127.0.0.1",
            "--master_port", str(_free_port()), "-m", "mlkd_fast"]


def _env():
    return dict(os.environ, OMP_NUM_THREADS="1", HF_HUB_OFFLINE="1", TRANSFORMERS_VERBOSITY="error")


def _run(job, out, ranks, resume=False, launcher="torchrun"):
    tmp, args = job
    cmd = _cmd(ranks, launcher) + args + ["--output-dir", str(out)] + (["--resume"] if resume else [])
    return subprocess.run(cmd, env=_env(), capture_output=True, text=True, timeout=300)


def _log(out):
    return [json.loads(line) for line in open(os.path.join(out, "metrics.jsonl")) if '"kind": "train"' in line]


def _student(out):
    from safetensors.torch import load_file

    return load_file(os.path.join(out, "student", "model.safetensors"))


@pytest.fixture(scope="module")
def single(job):
    out = job[0] / "single"
    res = _run(job, out, 1)
    assert res.returncode == 0, res.stderr
    return out


def _assert_same_run(a, b):
    la, lb = _log(a), _log(b)
    assert [r["step"] for r in la] == [r["step"] for r in lb]
    for ra, rb in zip(la, lb):
        for term in ("emb", "mha", "ffn", "ss", "sc", "kd", "loss"):
            if term in ra:
                assert rb[term] == pytest.approx(ra[term], rel=TOL, abs=1e-7), (ra["step"], term)
    wa, wb = _student(a), _student(b)
    assert max((wa[k] - wb[k]).abs().max().item() for k in wa) <= 1e-4


def test_two_ranks_with_global_relations_equal_one_process_on_the_global_batch(job, single):
    out = job[0] / "two"
    res = _run(job, out, 2)
    assert res.returncode == 0, res.stderr
    assert "data parallel over 2 ranks (gloo)" in res.stderr
    _assert_same_run(single, out)
    assert not [f for f in os.listdir(out) if f.startswith("rank")]  # only rank 0 wrote


def test_accelerate_launch_runs_the_same_distillation(job, single):
    pytest.importorskip("accelerate")
    out = job[0] / "accelerate"
    res = _run(job, out, 2, launcher="accelerate")
    assert res.returncode == 0, res.stdout + res.stderr
    assert "data parallel over 2 ranks (gloo)" in res.stderr
    _assert_same_run(single, out)


@pytest.mark.parametrize("resume_ranks", [1, 2])
def test_a_two_rank_run_interrupted_resumes_on_one_or_two_ranks(job, single, resume_ranks):
    tmp, args = job
    out = tmp / f"resumed{resume_ranks}"
    cmd = _cmd(2) + args + ["--output-dir", str(out)]
    proc = subprocess.Popen(cmd, env=_env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    path = os.path.join(out, "metrics.jsonl")
    while proc.poll() is None and not (os.path.exists(path) and sum(1 for _ in open(path)) >= 2):
        time.sleep(0.02)
    proc.send_signal(signal.SIGTERM)
    proc.communicate(timeout=120)
    steps = len(_log(out))
    assert 0 < steps < len(_log(single)), "the run ended before it could be interrupted"
    res = _run(job, out, resume_ranks, resume=True)
    assert res.returncode == 0, res.stderr
    _assert_same_run(single, out)


def test_local_relations_see_each_ranks_shard_only(job, single):
    out = job[0] / "local"
    tmp, args = job
    res = subprocess.run(_cmd(2) + args + ["--relations", "local", "--output-dir", str(out)], env=_env(),
                         capture_output=True, text=True, timeout=300)
    assert res.returncode == 0, res.stderr
    first = {r["step"]: r for r in _log(single)}
    stage2 = [r for r in _log(out) if "ss" in r]
    assert stage2 and all(r["ss"] != pytest.approx(first[r["step"]]["ss"], rel=1e-3) for r in stage2[:1])
    # token-level and soft-label terms do not depend on it
    assert stage2[0]["kd"] == pytest.approx(first[stage2[0]["step"]]["kd"], rel=TOL)


def test_the_global_batch_must_split_over_the_ranks(job):
    tmp, args = job
    cmd = _cmd(2) + [a if a != "8" else "7" for a in args] + ["--output-dir", str(tmp / "odd")]
    res = subprocess.run(cmd, env=_env(), capture_output=True, text=True, timeout=300)
    assert res.returncode != 0 and "batch_size=7 is the global batch and must be divisible by the 2 ranks" in res.stderr


def _rank_pid(launcher_pid, rank):
    """The pid of the worker of `rank` among the launcher's children (read from their environments)."""
    for child in subprocess.run(["pgrep", "-P", str(launcher_pid)], capture_output=True, text=True).stdout.split():
        try:
            env = open(f"/proc/{child}/environ", "rb").read().split(b"\0")
        except OSError:
            continue
        if f"RANK={rank}".encode() in env:
            return int(child)
    return None


def test_killing_one_rank_ends_the_run_with_an_error_and_keeps_the_last_checkpoint(job):
    from mlkd_fast.train import checkpoint

    tmp, args = job
    out = tmp / "killed"
    proc = subprocess.Popen(_cmd(2) + args + ["--output-dir", str(out)], env=_env(), stdout=subprocess.DEVNULL,
                            stderr=subprocess.PIPE, text=True)
    path = os.path.join(out, "metrics.jsonl")
    while proc.poll() is None and not (os.path.exists(path) and sum(1 for _ in open(path)) >= 2):
        time.sleep(0.02)
    victim = _rank_pid(proc.pid, 1)
    assert victim is not None, "rank 1 not found"
    os.kill(victim, signal.SIGKILL)
    start = time.time()
    _, err = proc.communicate(timeout=120)
    assert proc.returncode != 0 and time.time() - start < 120
    assert checkpoint.load_state(str(out), "distill")["state"]["global_step"] >= 1  # intact, resumable


def test_leave_process_group_waits_and_destroys(tmp_path):
    """The CLI's last step under a launcher: a group it joined is left (barrier, then destroyed), so no rank's
    interpreter exit tears gloo down under another; outside a group it does nothing."""
    import torch.distributed as dist

    from mlkd_fast.train.distributed import leave_process_group

    leave_process_group()  # no group: nothing to do, no error
    dist.init_process_group("gloo", init_method=f"file://{tmp_path / 'store'}", rank=0, world_size=1)
    assert dist.is_initialized()
    leave_process_group()
    assert not dist.is_initialized()
