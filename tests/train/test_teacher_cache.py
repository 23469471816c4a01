"""The teacher-output cache on tiny models: built once and reused (the teacher never runs again), the same
losses and dev score as without it, a new cache when the teacher changes, a damaged cache folder rebuilt, the
teacher-with-dropout recipe refused, and resume."""
import json
import math
import os

import pytest
import torch
from tiny_bert import crash_at_save, one_thread, tiny_bert, tokenized_dataset  # noqa: F401 (fixture)

from mlkd_fast import DistillConfig, build_student, distill

pytestmark = pytest.mark.usefixtures("one_thread")


def _run(tmp_path, out, cache, teacher=None, seed=0, objective="mlkd", calls=None, train=None, root="cache", **kw):
    teacher = teacher or tiny_bert(layers=4, hidden=32, heads=4)
    if calls is not None:
        teacher.register_forward_hook(lambda *a: calls.append(1))
    torch.manual_seed(seed)
    student = build_student(teacher, 2, num_heads=2)
    cfg = DistillConfig(objective=objective, stage1_epochs=1, stage2_epochs=2, batch_size=8, eval_batch_size=16,
                        splits=4, learning_rate=5e-3, device="cpu", seed=seed,
                        teacher_cache=str(tmp_path / root) if cache else None, **kw)
    return distill(teacher, student, train or tokenized_dataset(24), eval_data=tokenized_dataset(8, seed=1), config=cfg,
                   output_dir=str(tmp_path / out), backend="torch", progress=False)


def _losses(res):
    return [h["loss"] for h in res.history]


def test_built_once_reused_and_equal_to_running_the_teacher(tmp_path):
    plain = _run(tmp_path, "plain", cache=False)
    calls = []
    first = _run(tmp_path, "first", cache=True, calls=calls)
    # the build runs the teacher over the 24 training rows in batches of 16 (2 calls); training never does;
    # evaluation does not run the teacher either
    assert len(calls) == 2
    folders = os.listdir(tmp_path / "cache")
    assert len(folders) == 1
    manifest = json.loads((tmp_path / "cache" / folders[0] / "manifest.json").read_text())
    assert {"tok", "hid0", "hid2", "hid4", "mha2", "mha4", "cls", "logits"} == set(manifest["names"])
    for a, b in zip(_losses(plain), _losses(first)):
        assert a == pytest.approx(b, rel=1e-4, abs=1e-6)  # fp32 rounding of the teacher over other batch shapes
    assert first.best_metric == plain.best_metric
    calls.clear()
    again = _run(tmp_path, "again", cache=True, calls=calls, seed=1)  # another seed: the cache is read, not built
    assert calls == [] and os.listdir(tmp_path / "cache") == folders and math.isfinite(again.history[-1]["loss"])
    same = _run(tmp_path, "same", cache=True, calls=calls)  # the first run's seed again, reading: bitwise equal
    assert calls == [] and _losses(same) == _losses(first)


def test_an_objective_needing_fewer_features_reads_a_larger_cache_bitwise(tmp_path):
    own = _run(tmp_path, "own", cache=True, objective="kd", root="kd_cache")  # kd builds a cache of logits only
    _run(tmp_path, "mlkd", cache=True)
    calls = []
    shared = _run(tmp_path, "shared", cache=True, objective="kd", calls=calls)  # kd reads mlkd's cache
    assert calls == [] and len(os.listdir(tmp_path / "cache")) == 1
    assert _losses(shared) == _losses(own) and shared.best_metric == own.best_metric


def test_another_teacher_data_dtype_or_feature_set_gets_its_own_cache(tmp_path):
    _run(tmp_path, "a", cache=True)
    other = tiny_bert(layers=4, hidden=32, heads=4, seed=3)
    _run(tmp_path, "b", cache=True, teacher=other)
    _run(tmp_path, "c", cache=True, train=tokenized_dataset(24, seed=5))  # other token ids (file, max length)
    _run(tmp_path, "d", cache=True, teacher_cache_dtype="fp16")
    _run(tmp_path, "e", cache=True, objective="minilmv2")  # Q/K/V features the first cache does not hold
    assert len(os.listdir(tmp_path / "cache")) == 5


@pytest.mark.parametrize("damage", ["flipped byte", "truncated", "manifest"])
def test_a_damaged_cache_folder_of_the_library_is_rebuilt(tmp_path, damage, capsys):
    first = _run(tmp_path, "a", cache=True)
    (folder,) = os.listdir(tmp_path / "cache")
    path = tmp_path / "cache" / folder / ("manifest.json" if damage == "manifest" else "hid2.npy")
    data = bytearray(path.read_bytes())
    if damage == "flipped byte":
        data[-1] ^= 0xFF
    else:
        del data[len(data) // 2:]
    path.write_bytes(bytes(data))
    capsys.readouterr()
    again = _run(tmp_path, "b", cache=True)
    said = capsys.readouterr()
    assert "rebuilding it" in said.out + said.err or "removing it" in said.out + said.err
    assert "does not match its checksum" in said.out + said.err or "manifest.json is damaged" in said.out + said.err
    assert _losses(again) == _losses(first) and os.listdir(tmp_path / "cache") == [folder]


def test_teacher_with_dropout_is_refused():
    with pytest.raises(ValueError, match="teacher_cache cannot be used with teacher_mode='train'"):
        DistillConfig(teacher_cache="x", teacher_mode="train").validate()


def test_resume_with_the_cache_equals_the_uninterrupted_run(tmp_path, monkeypatch):
    from mlkd_fast.train.checkpoint import load_state

    full = _run(tmp_path, "full", cache=True, checkpoint_every=1)
    with crash_at_save(monkeypatch, 4):
        with pytest.raises(Exception):
            _run(tmp_path, "cut", cache=True, checkpoint_every=1)
    teacher = tiny_bert(layers=4, hidden=32, heads=4)
    torch.manual_seed(0)
    student = build_student(teacher, 2, num_heads=2)
    cfg = DistillConfig(stage1_epochs=1, stage2_epochs=2, batch_size=8, eval_batch_size=16, splits=4,
                        learning_rate=5e-3, device="cpu", seed=0, checkpoint_every=1,
                        teacher_cache=str(tmp_path / "cache"))
    resumed = distill(teacher, student, tokenized_dataset(24), eval_data=tokenized_dataset(8, seed=1), config=cfg,
                      output_dir=str(tmp_path / "cut"), backend="torch", progress=False, resume=True)
    assert _losses(resumed) == _losses(full)
    a = load_state(str(tmp_path / "full"), "distill")["modules"]["model"]
    b = load_state(str(tmp_path / "cut"), "distill")["modules"]["model"]
    assert all(torch.equal(a[k], b[k]) for k in a)


def test_disk_budget_and_the_cli_flag(tmp_path, capsys):
    with pytest.raises(ValueError, match="over teacher_cache_max_gb"):
        _run(tmp_path, "a", cache=True, teacher_cache_max_gb=1e-6)
    assert not (tmp_path / "cache").exists() or os.listdir(tmp_path / "cache") == []
    from tiny_bert import tiny_tokenizer, write_mrpc

    from mlkd_fast.cli import main

    teacher = tmp_path / "teacher"
    tiny_bert(layers=2).save_pretrained(teacher)
    tiny_tokenizer(str(teacher)).save_pretrained(teacher)
    glue = write_mrpc(str(tmp_path / "glue"))
    args = ["distill", "--task", "mrpc", "--data-dir", glue, "--teacher", str(teacher), "--student-layers", "1",
            "--splits", "4", "--stage1-epochs", "1", "--stage2-epochs", "1", "--batch-size", "8", "--device", "cpu",
            "--no-progress", "--teacher-cache", str(tmp_path / "cli_cache"), "--teacher-cache-dtype", "fp16"]
    assert main(args + ["--output-dir", str(tmp_path / "o1")]) == 0
    out = capsys.readouterr().out
    assert "building the teacher cache" in out and "MiB" in out
    assert main(args + ["--output-dir", str(tmp_path / "o2")]) == 0
    out = capsys.readouterr().out
    assert "building" not in out and "teacher cache" in out  # the second run reads it


def test_damaged_manifest_and_a_file_as_cache_folder_are_clear_errors(tmp_path):
    from mlkd_fast import DistillConfig
    from mlkd_fast.errors import InputError
    from mlkd_fast.train.teacher_cache import read_manifest

    folder = tmp_path / "abc-def"
    folder.mkdir()
    manifest = folder / "manifest.json"
    for text in ('{"names": ["cls"], "fi', '{"names": ["cls"]}', "[1, 2]"):
        manifest.write_text(text)
        with pytest.raises(InputError, match=r"manifest\.json is damaged .*delete its folder"):
            read_manifest(str(manifest))
    a_file = tmp_path / "cache.txt"
    a_file.write_text("x")
    with pytest.raises(InputError, match=r"teacher_cache .*cache\.txt' is a file"):
        DistillConfig(teacher_cache=str(a_file)).validate()
