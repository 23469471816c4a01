"""A run that goes wrong says so, a resumed run is the same run, and nothing on disk is half-written or mixed.
One test (or a few) per defect of the reliability issue; each failed before the fix."""
import json
import os
import signal
import subprocess
import sys

import numpy as np
import pytest
import torch
from tiny_bert import Crash, crash_at_save, one_thread, tiny_bert, tokenized_dataset  # noqa: F401 (fixture)

import mlkd_fast as mf
from mlkd_fast import DistillConfig, FinetuneConfig, build_student, distill, finetune
from mlkd_fast.data import metrics
from mlkd_fast.errors import DivergenceError, InputError
from mlkd_fast.train import atomic, checkpoint, rundir

pytestmark = pytest.mark.usefixtures("one_thread")


def _cfg(**kw):
    base = dict(stage1_epochs=1, stage2_epochs=1, batch_size=8, eval_batch_size=16, splits=4, learning_rate=5e-3,
                checkpoint_every=1, device="cpu")
    base.update(kw)
    return DistillConfig(**base)


def _pair(heads=2, hidden=32, seed=0):
    teacher = tiny_bert(layers=2, hidden=32, heads=4, seed=seed)
    torch.manual_seed(5)
    return teacher, build_student(teacher, 1, layer_map=(2,), num_heads=heads, hidden_size=hidden, init="random")


def _distill(tmp_path, name="run", pair=None, train=None, **kw):
    teacher, student = pair or _pair()
    args = dict(config=_cfg(), output_dir=str(tmp_path / name), backend="torch", progress=False)
    args.update(kw)
    return distill(teacher, student, train if train is not None else tokenized_dataset(16), **args)


def _all_finite_on_disk(out):
    from safetensors.torch import load_file

    for root, _, files in os.walk(out):
        for f in files:
            if f.endswith(".safetensors"):
                assert all(torch.isfinite(t).all() for t in load_file(os.path.join(root, f)).values()), f
    if os.path.exists(checkpoint.state_path(out)):
        checkpoint.load_state(out, "distill")  # refuses non-finite weights


# ----------------------------------------------------------------------------- 1. divergence


def test_a_diverging_run_stops_naming_the_step_and_saves_nothing_non_finite(tmp_path):
    with pytest.raises(DivergenceError, match=r"(loss|gradient norm) is (nan|inf).*global step \d+"):
        _distill(tmp_path, config=_cfg(learning_rate=1e6, stage1_epochs=3, max_grad_norm=0.0))
    _all_finite_on_disk(str(tmp_path / "run"))


def test_non_finite_labels_are_refused_at_load(tmp_path):
    folder = tmp_path / "STS-B"
    folder.mkdir()
    rows = ["index\tgenre\tfilename\tyear\told_index\tsource1\tsource2\tsentence1\tsentence2\tscore",
            "0\tg\tf\t2012\t0\ts\ts\ta b\tc d\t2.5", "1\tg\tf\t2012\t1\ts\ts\ta b\tc d\tnan"]
    (folder / "train.tsv").write_text("\n".join(rows) + "\n")
    with pytest.raises(InputError, match=r"line 3: label 'nan' is not a finite number"):
        mf.load_split("sts-b", "train", data_dir=str(tmp_path))
    ds = tokenized_dataset(8, num_labels=1).map(lambda r, i: {"labels": float("inf") if i == 3 else r["labels"]},
                                                with_indices=True)
    with pytest.raises(InputError, match="regression label of row 3 is inf"):
        finetune(tiny_bert(layers=1, num_labels=1), ds, config=FinetuneConfig(device="cpu"),
                 output_dir=str(tmp_path / "ft"), progress=False)


def test_metrics_refuse_non_finite_predictions():
    with pytest.raises(InputError, match="predictions hold 1 non-finite"):
        metrics.compute_metrics("sts-b", np.array([0.1, np.nan, 0.3]), np.array([1.0, 2.0, 3.0]))
    with pytest.raises(InputError, match="non-finite"):
        metrics.compute_metrics("mrpc", np.array([[0.1, np.inf], [0.0, 1.0]]), np.array([0, 1]))


# ----------------------------------------------------------------------------- 2. resume is the same run


@pytest.mark.parametrize("change,what", [
    ("teacher", "teacher_weights"), ("heads", "student_shape"), ("hidden", "student_shape"), ("data", "train_data")])
def test_resume_refuses_another_run_naming_what_differs(tmp_path, change, what):
    _distill(tmp_path)
    pair = {"teacher": lambda: _pair(seed=1), "heads": lambda: _pair(heads=1), "hidden": lambda: _pair(hidden=16)}
    train = tokenized_dataset(16, seed=3) if change == "data" else None
    with pytest.raises(InputError, match=f"not the same run.*{what}"):
        _distill(tmp_path, pair=pair.get(change, _pair)(), train=train, resume=True)


# ----------------------------------------------------------------------------- 3. one run per directory


def test_a_second_run_into_a_live_runs_directory_is_refused_and_deletes_nothing(tmp_path):
    out = tmp_path / "run"
    out.mkdir()
    (out / "precious.txt").write_text("x")
    live = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        (tmp_path / "run.lock").write_text(f"{live.pid} {os.uname().nodename}\n")
        with pytest.raises(InputError, match=f"in use by another run \\(pid {live.pid}"):
            _distill(tmp_path, overwrite=True)
        assert (out / "precious.txt").exists()
    finally:
        live.kill()
        live.wait()
    # the same lock, its process gone: stale, taken over, released at the end
    _distill(tmp_path, overwrite=True)
    assert not (tmp_path / "run.lock").exists() and not (out / "precious.txt").exists()


# ----------------------------------------------------------------------------- 4. corrupt checkpoints


def test_a_corrupted_checkpoint_falls_back_to_the_previous_one(tmp_path, capsys):
    _distill(tmp_path)
    out = str(tmp_path / "run")
    path = checkpoint.state_path(out)
    newest = checkpoint.load_state(out, "distill")["state"]["global_step"]
    data = bytearray(open(path, "rb").read())
    data[len(data) // 2: len(data) // 2 + 1024] = os.urandom(1024)  # 1 KiB overwritten inside a tensor
    open(path, "wb").write(bytes(data))
    state = checkpoint.load_state(out, "distill")
    assert state["state"]["global_step"] <= newest  # the epoch-end save may repeat the last step's
    assert "checksum does not match" in capsys.readouterr().err
    os.remove(os.path.join(out, "checkpoint", checkpoint.PREV_FILE))
    with pytest.raises(InputError, match="checksum does not match"):
        checkpoint.load_state(out, "distill")


def test_non_finite_weights_in_a_checkpoint_are_refused(tmp_path):
    state = {"kind": "distill", "config": {}, "state": {"global_step": 1}, "optimizer": {}, "scheduler": {}, "rng": {},
             "modules": {"model": {"w": torch.tensor([1.0, float("nan")])}}}
    checkpoint.save_state(str(tmp_path), state)
    with pytest.raises(InputError, match=r"non-finite weights \(model: w\)"):
        checkpoint.load_state(str(tmp_path), "distill")


# ----------------------------------------------------------------------------- 5. atomic model folders


def _weights(folder):
    from safetensors.torch import load_file

    return load_file(os.path.join(folder, "model.safetensors"))


@pytest.mark.parametrize("exchange", [True, False], ids=["renameat2", "two-renames"])
@pytest.mark.parametrize("point", ["model:saved-tmp", "model:marked-complete", "model:exchanged", "model:old-aside",
                                   "model:swapped"])
def test_a_crash_at_any_step_of_a_model_save_leaves_the_old_or_the_new_model(tmp_path, monkeypatch, exchange, point):
    monkeypatch.setattr(atomic, "USE_EXCHANGE", exchange)
    dest = str(tmp_path / "student")
    old, new = tiny_bert(layers=1, seed=1), tiny_bert(layers=1, seed=2)
    atomic.save_model_atomic(old, dest)

    def hook(name):
        if name == point:
            raise Crash(name)

    monkeypatch.setattr(atomic, "FAULT_HOOK", hook)
    try:
        atomic.save_model_atomic(new, dest)
    except Crash:
        pass
    monkeypatch.setattr(atomic, "FAULT_HOOK", None)
    atomic.recover_model_dir(dest)  # what the next save or resume does first
    got = _weights(dest)
    versions = [{k: v for k, v in m.state_dict().items()} for m in (old, new)]
    assert any(all(torch.equal(got[k], v[k]) for k in got) for v in versions)
    assert sorted(os.listdir(tmp_path)) == ["student"]  # no .tmp / .old leftovers


@pytest.mark.parametrize("point", ["state:written-tmp", "state:verified", "state:rotated"])
def test_a_crash_at_any_step_of_a_checkpoint_write_leaves_a_loadable_checkpoint(tmp_path, monkeypatch, point):
    def state(step):
        return {"kind": "distill", "config": {}, "state": {"global_step": step}, "optimizer": {}, "scheduler": {},
                "rng": {}, "modules": {"model": {"w": torch.full((3,), float(step))}}}

    checkpoint.save_state(str(tmp_path), state(1))
    monkeypatch.setattr(atomic, "FAULT_HOOK", lambda name: (_ for _ in ()).throw(Crash()) if name == point else None)
    with pytest.raises(Crash):
        checkpoint.save_state(str(tmp_path), state(2))
    monkeypatch.setattr(atomic, "FAULT_HOOK", None)
    assert checkpoint.load_state(str(tmp_path), "distill")["state"]["global_step"] in (1, 2)
    rundir.clean_leftovers(str(tmp_path))
    assert not [f for f in os.listdir(tmp_path / "checkpoint") if ".tmp." in f]


# ----------------------------------------------------------------------------- 6. leftovers and replays


def test_resume_cleans_leftovers_and_logs_each_step_once(tmp_path, monkeypatch):
    with crash_at_save(monkeypatch, 3):
        _distill(tmp_path, config=_cfg(checkpoint_every=1))
    out = tmp_path / "run"
    (out / "checkpoint" / "state.pt.tmp.99999").write_bytes(b"half")
    (out / "student.tmp").mkdir()
    _distill(tmp_path, config=_cfg(checkpoint_every=1), resume=True)
    assert not (out / "checkpoint" / "state.pt.tmp.99999").exists() and not (out / "student.tmp").exists()
    steps = [json.loads(line)["step"] for line in open(out / "metrics.jsonl") if '"kind": "train"' in line]
    assert steps == sorted(set(steps)) == list(range(1, len(steps) + 1))


def test_sigint_writes_a_checkpoint_at_the_next_step_and_resume_finishes_the_run(tmp_path, monkeypatch):
    from mlkd_fast.errors import RunInterrupted
    from mlkd_fast.train import loop

    ref = _distill(tmp_path, name="ref", config=_cfg(checkpoint_every=0))
    real = loop._check_finite
    seen = []

    def interrupting(what, value, *a):
        seen.append(what)
        if len(seen) == 3:
            os.kill(os.getpid(), signal.SIGINT)  # arrives mid-step; honoured at the step's end
        return real(what, value, *a)

    monkeypatch.setattr(loop, "_check_finite", interrupting)
    with pytest.raises(RunInterrupted, match="SIGINT received: stopped after global step 2"):
        _distill(tmp_path, config=_cfg(checkpoint_every=0))
    monkeypatch.setattr(loop, "_check_finite", real)
    assert checkpoint.load_state(str(tmp_path / "run"), "distill")["state"]["global_step"] == 2
    res = _distill(tmp_path, config=_cfg(checkpoint_every=0), resume=True)
    assert res.history == ref.history


# ----------------------------------------------------------------------------- 7, 9. inputs checked first


def test_lengths_vocabularies_and_coercions_are_checked_before_anything_runs(tmp_path):
    teacher, student = _pair()
    with pytest.raises(InputError, match="longer than the 128 positions of the teacher"):
        _distill(tmp_path, pair=(teacher, student), config=_cfg(max_seq_length=512))
    other = tiny_bert(layers=1)
    other.resize_token_embeddings(80)
    with pytest.raises(InputError, match="student's vocabulary \\(80 tokens\\) differs"):
        _distill(tmp_path, pair=(teacher, other))
    with pytest.raises(InputError, match="student is the teacher"):
        _distill(tmp_path, pair=(teacher, teacher))
    long_rows = tokenized_dataset(8, min_len=20, max_len=24)
    with pytest.raises(InputError, match="more than max_seq_length=16"):
        _distill(tmp_path, train=long_rows, config=_cfg(max_seq_length=16))
    ragged = tokenized_dataset(8).map(lambda r, i: {"attention_mask": r["attention_mask"][:-1] if i == 2 else r["attention_mask"]},
                                      with_indices=True)
    with pytest.raises(InputError, match="row 2 has \\d+ input_ids but \\d+ attention_mask"):
        _distill(tmp_path, train=ragged)
    for kw, match in ((dict(batch_size=0), "batch_size must be >= 1"), (dict(latency_batches=-1), "latency_batches")):
        with pytest.raises(InputError, match=match):
            mf.evaluate(teacher, tokenized_dataset(4), **kw)
    assert not (tmp_path / "run").exists()


# ----------------------------------------------------------------------------- 11. no silent fallback


def test_a_broken_triton_install_is_reported_not_hidden(monkeypatch):
    from mlkd_fast.ops import backends

    monkeypatch.setattr(backends, "_load_triton", lambda: (None, "importing triton failed: RuntimeError: broken driver"))
    backends._warn_once.cache_clear()
    with pytest.raises(mf.errors.BackendError, match="importing triton failed: RuntimeError: broken driver"):
        backends.resolve("triton", torch.device("cuda"))
    with pytest.warns(RuntimeWarning, match="eager torch reference.*broken driver"):
        assert backends.resolve("auto", torch.device("cuda")) == "torch"


def test_a_full_disk_keeps_the_previous_checkpoint_and_model_and_says_no_space(tmp_path, monkeypatch):
    import errno

    from mlkd_fast.errors import DiskFullError

    def state(step):
        return {"kind": "distill", "config": {}, "state": {"global_step": step}, "optimizer": {}, "scheduler": {},
                "rng": {}, "modules": {"model": {"w": torch.full((3,), float(step))}}}

    def full(*args, **kwargs):
        raise OSError(errno.ENOSPC, "No space left on device")

    checkpoint.save_state(str(tmp_path), state(1))
    with monkeypatch.context() as m:
        m.setattr(os, "fsync", full)  # the disk fills while the new checkpoint is flushed
        with pytest.raises(DiskFullError, match="no space left on device while writing .*--resume"):
            checkpoint.save_state(str(tmp_path), state(2))
    assert checkpoint.load_state(str(tmp_path), "distill")["state"]["global_step"] == 1
    assert not [f for f in os.listdir(tmp_path / "checkpoint") if ".tmp." in f]

    old, new = tiny_bert(layers=1, seed=1), tiny_bert(layers=1, seed=2)
    dest = str(tmp_path / "student")
    atomic.save_model_atomic(old, dest)

    def half_then_full(folder, *args, **kwargs):
        os.makedirs(folder, exist_ok=True)
        with open(os.path.join(folder, "config.json"), "w") as f:
            f.write("{")
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(new, "save_pretrained", half_then_full)
    with pytest.raises(DiskFullError, match="no space left"):
        atomic.save_model_atomic(new, dest)
    got = _weights(dest)
    assert all(torch.equal(got[k], v) for k, v in old.state_dict().items() if k in got)
    assert sorted(os.listdir(tmp_path)) == ["checkpoint", "student"]
