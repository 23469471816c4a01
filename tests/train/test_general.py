"""General distillation on unlabelled text: packing by hand-checkable cases, the packed cache and its
fingerprint, a run of any student shape whose student AutoModel loads and distill/finetune take, exact resume."""
import os

import pytest
import torch
from tiny_bert import WORDS, one_thread, tiny_config, tiny_tokenizer, tokenized_dataset  # noqa: F401 (fixture)

from mlkd_fast import DistillConfig, build_student, distill
from mlkd_fast.data.corpus import corpus_fingerprint, iter_lines, pack, packed_corpus
from mlkd_fast.train.general import general_distill

pytestmark = pytest.mark.usefixtures("one_thread")


def _corpus(folder, lines=60, seed=0):
    import numpy as np

    rng = np.random.default_rng(seed)
    os.makedirs(folder, exist_ok=True)
    for part in ("a.txt", "sub/b.txt"):
        path = os.path.join(folder, part)
        os.makedirs(os.path.dirname(path), exist_ok=True)
        with open(path, "w") as f:
            for _ in range(lines // 2):
                f.write(" ".join(rng.choice(WORDS, size=int(rng.integers(2, 9)))) + "\n\n")
    return folder


def test_pack_by_hand(tmp_path):
    tok = tiny_tokenizer(str(tmp_path))
    cls, sep = tok.cls_token_id, tok.sep_token_id
    ids = {w: tok.convert_tokens_to_ids(w) for w in WORDS}
    rows = list(pack(["good movie", "bad film", "the plot was not great at all"], tok, max_length=8))
    g, m, b, f = ids["good"], ids["movie"], ids["bad"], ids["film"]
    assert rows[0]["input_ids"] == [cls, g, m, sep, b, f, sep]  # two lines fit in 8 tokens; the third does not
    long = [ids[w] for w in "the plot was not great".split()]  # 'at' and 'all' are [UNK]
    assert rows[1]["input_ids"] == [cls] + long + [tok.unk_token_id, sep]
    assert rows[2]["input_ids"] == [cls, tok.unk_token_id, sep]  # a line longer than a sequence is cut
    assert all(len(r["input_ids"]) <= 8 and r["attention_mask"] == [1] * len(r["input_ids"]) for r in rows)


def test_lines_skip_blanks_and_the_cache_follows_the_files(tmp_path):
    tok = tiny_tokenizer(str(tmp_path))
    folder = _corpus(str(tmp_path / "text"), lines=20)
    assert len(list(iter_lines([folder]))) == 20
    first = corpus_fingerprint([folder], tok, 16)
    ds = packed_corpus([folder], tok, 16, str(tmp_path / "cache"))
    assert len(ds) > 0 and max(len(x) for x in ds["input_ids"]) <= 16
    with open(os.path.join(folder, "a.txt"), "a") as f:
        f.write("good good good\n")
    assert corpus_fingerprint([folder], tok, 16) != first != corpus_fingerprint([folder], tok, 32)
    assert sum(map(len, packed_corpus([folder], tok, 16, str(tmp_path / "cache"))["input_ids"])) > sum(map(len, ds["input_ids"]))
    with pytest.raises(ValueError, match="neither a file nor a folder"):
        list(iter_lines([str(tmp_path / "missing")]))


def _teacher_and_tokenizer(tmp_path):
    from transformers import BertModel

    torch.manual_seed(0)
    teacher = BertModel(tiny_config(layers=4, hidden=32, heads=4), add_pooling_layer=False)
    return teacher, tiny_tokenizer(str(tmp_path))


def test_general_distillation_narrow_student_loads_and_feeds_distill(tmp_path):
    from transformers import AutoModel, AutoModelForSequenceClassification

    teacher, tok = _teacher_and_tokenizer(tmp_path)
    torch.manual_seed(1)
    student = build_student(teacher, 2, hidden_size=16, num_heads=2, intermediate_size=32, init="random")
    cfg = DistillConfig(stage1_epochs=3, batch_size=4, splits=4, max_seq_length=16, learning_rate=5e-3, device="cpu")
    res = general_distill(teacher, student, [_corpus(str(tmp_path / "text"))], tokenizer=tok, config=cfg,
                          output_dir=str(tmp_path / "gd"), backend="torch", progress=False)
    assert [h["epoch"] for h in res.history] == [1, 2, 3] and res.history[-1]["loss"] < res.history[0]["loss"]
    assert set(res.history[0]) >= {"emb", "mha", "ffn"}
    loaded = AutoModel.from_pretrained(res.student_dir)
    from transformers import AutoTokenizer

    assert loaded.config.hidden_size == 16
    assert AutoTokenizer.from_pretrained(res.student_dir)("good movie")["input_ids"] == tok("good movie")["input_ids"]
    # the task-agnostic student takes a task head and is distilled on a task
    clf = AutoModelForSequenceClassification.from_pretrained(res.student_dir, num_labels=2)
    from transformers import BertForSequenceClassification

    torch.manual_seed(2)
    task_teacher = BertForSequenceClassification(tiny_config(layers=4, hidden=32, heads=4))
    out = distill(task_teacher, clf, tokenized_dataset(16), config=DistillConfig(stage1_epochs=1, stage2_epochs=1,
                  batch_size=8, splits=4, device="cpu"), output_dir=str(tmp_path / "task"), backend="torch", progress=False)
    assert [h["stage"] for h in out.history] == [1, 2]


def test_max_steps_and_exact_resume(tmp_path, monkeypatch):
    from tiny_bert import Crash, crash_at_save

    teacher, tok = _teacher_and_tokenizer(tmp_path)
    corpus = [_corpus(str(tmp_path / "text"), lines=80)]
    cfg = DistillConfig(stage1_epochs=5, max_steps=7, batch_size=4, splits=4, max_seq_length=16, learning_rate=5e-3,
                        checkpoint_every=2, device="cpu")

    def student():
        torch.manual_seed(1)
        return build_student(teacher, 2, num_heads=2, init="random")

    full = general_distill(teacher, student(), corpus, tokenizer=tok, config=cfg, output_dir=str(tmp_path / "a"),
                           backend="torch", progress=False)
    assert sum(h["steps"] for h in full.history) == 7
    with crash_at_save(monkeypatch, 3):
        with pytest.raises(Crash):
            general_distill(teacher, student(), corpus, tokenizer=tok, config=cfg, output_dir=str(tmp_path / "b"),
                            backend="torch", progress=False)
    resumed = general_distill(teacher, student(), corpus, tokenizer=tok, config=cfg, output_dir=str(tmp_path / "b"),
                              backend="torch", progress=False, resume=True)
    from safetensors.torch import load_file

    a, b = (load_file(os.path.join(r.student_dir, "model.safetensors")) for r in (full, resumed))
    assert sorted(a) == sorted(b) and all(torch.equal(a[k], b[k]) for k in a)


def test_objective_without_stage1_is_refused(tmp_path):
    teacher, tok = _teacher_and_tokenizer(tmp_path)
    with pytest.raises(ValueError, match="has no stage 1"):
        general_distill(teacher, build_student(teacher, 2), [_corpus(str(tmp_path / "t"))], tokenizer=tok,
                        config=DistillConfig(objective="kd"), output_dir=str(tmp_path / "o"))
