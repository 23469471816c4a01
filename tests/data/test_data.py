"""GLUE readers (every TSV layout of the real files), bad files, tokenisation, padding, order, metrics."""
import json
import os

import numpy as np
import pytest
import torch
from tiny_bert import one_thread, tiny_tokenizer, write_mrpc  # noqa: F401 (fixture)

from mlkd_fast import data
from mlkd_fast.data import metrics

pytestmark = pytest.mark.usefixtures("one_thread")


def _write(path, lines, bom=False):
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with open(path, "w", encoding="utf-8") as f:
        f.write(("\ufeff" if bom else "") + "\n".join(lines) + "\n")


def test_mrpc_with_bom_header_and_quotes(tmp_path):
    _write(tmp_path / "MRPC" / "dev.tsv", [
        "Quality\t#1 ID\t#2 ID\t#1 String\t#2 String",
        '1\t1\t2\tHe said "the witness", twice.\tReferring to him as "the witness".',
        "0\t3\t4\tA b.\tC d.",
    ], bom=True)
    ds = data.load_glue_split("mrpc", str(tmp_path), "dev")
    assert ds.column_names == ["sentence1", "sentence2", "labels"]
    assert ds["labels"] == [1, 0]
    assert ds[0]["sentence1"] == 'He said "the witness", twice.'  # quotes are data, not CSV quoting


def test_cola_without_header_sts_b_scores_and_rte_string_labels(tmp_path):
    _write(tmp_path / "CoLA" / "train.tsv", ["gj04\t1\t\tOur friends won't buy this.", "gj04\t0\t*\tThem buy."])
    _write(tmp_path / "STS-B" / "dev.tsv", [
        "index\tgenre\tfilename\tyear\told_index\tsource1\tsource2\tsentence1\tsentence2\tscore",
        "0\tmain-captions\tMSRvid\t2012test\t0000\tnone\tnone\tA man dances.\tA man is dancing.\t4.750",
    ])
    _write(tmp_path / "RTE" / "train.tsv", ["index\tsentence1\tsentence2\tlabel", "0\tA.\tB.\tnot_entailment", "1\tC.\tD.\tentailment"])
    _write(tmp_path / "SST-2" / "dev.tsv", ["sentence\tlabel", "it 's charming . \t1"])
    cola = data.load_glue_split("CoLA", str(tmp_path), "train")
    assert cola["labels"] == [1, 0] and cola["sentence1"][1] == "Them buy." and "sentence2" not in cola.column_names
    stsb = data.load_glue_split("stsb", str(tmp_path), "dev")
    assert stsb["labels"] == [4.75] and stsb["sentence2"] == ["A man is dancing."]
    assert data.load_glue_split("rte", str(tmp_path), "train")["labels"] == [1, 0]
    assert data.load_glue_split("sst2", str(tmp_path), "dev")["labels"] == [1]


def test_real_glue_files_parse_when_present():
    repo = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    glue = os.path.join(os.path.dirname(repo), "shared", "data", "glue")  # ../shared beside the checkout
    if not os.path.isdir(glue):
        pytest.skip("../shared/data/glue is not present")
    for task, n in (("mrpc", 408), ("cola", 1043), ("sts-b", 1500), ("rte", 277), ("sst-2", 872), ("qnli", 5463)):
        assert len(data.load_glue_split(task, glue, "dev")) == n


def test_malformed_lines_name_the_file_and_line(tmp_path):
    _write(tmp_path / "MRPC" / "train.tsv", ["Quality\t#1 ID\t#2 ID\t#1 String\t#2 String", "1\t1\t2\ta\tb", "0\t3\t4\tonly four"])
    with pytest.raises(ValueError, match=r"train\.tsv, line 3: expected 5 tab-separated fields, got 4"):
        data.load_glue_split("mrpc", str(tmp_path), "train")
    _write(tmp_path / "RTE" / "dev.tsv", ["index\tsentence1\tsentence2\tlabel", "0\tA.\tB.\tmaybe"])
    with pytest.raises(ValueError, match=r"dev\.tsv, line 2: label 'maybe' is not one of"):
        data.load_glue_split("rte", str(tmp_path), "dev")
    _write(tmp_path / "STS-B" / "dev.tsv", ["sentence1\tsentence2\tscore", "a\tb\tfive"])
    with pytest.raises(ValueError, match=r"line 2: label 'five' is not a number"):
        data.load_glue_split("sts-b", str(tmp_path), "dev")
    _write(tmp_path / "QNLI" / "dev.tsv", ["index\tsentence1\tsentence2\tlabel"])
    with pytest.raises(ValueError, match=r"line 1: header .* lacks column\(s\) \['question', 'sentence'\]"):
        data.load_glue_split("qnli", str(tmp_path), "dev")


def test_missing_files_and_unknown_tasks(tmp_path):
    write_mrpc(str(tmp_path))
    with pytest.raises(ValueError, match=r"MRPC/test_x\.tsv' does not exist"):
        data.load_glue_split("mrpc", str(tmp_path), "test_x")
    with pytest.raises(ValueError, match="has no RTE/ folder"):
        data.load_glue_split("rte", str(tmp_path), "train")
    with pytest.raises(ValueError, match="unknown task 'mrcp'"):
        data.load_glue_split("mrcp", str(tmp_path), "train")
    with pytest.raises(ValueError, match="must be an existing GLUE directory"):
        data.load_glue_split("mrpc", str(tmp_path / "nope"), "train")


def test_datasets_library_files_with_hub_column_names(tmp_path):
    path = tmp_path / "dev.jsonl"
    with open(path, "w") as f:
        for p, h, l in (("A man.", "A person.", 0), ("Cats.", "Dogs.", 2)):
            f.write(json.dumps({"premise": p, "hypothesis": h, "label": l, "idx": 0}) + "\n")
    ds = data.load_split("mnli", "dev", source=str(path))
    assert ds.column_names == ["sentence1", "sentence2", "labels"] and ds["labels"] == [0, 2]
    csv_path = tmp_path / "train.csv"
    csv_path.write_text("sentence,label\nfine film,1\nbad film,0\n")
    assert data.load_split("sst-2", "train", source=str(csv_path))["labels"] == [1, 0]
    bad = tmp_path / "x.txt"
    bad.write_text("a")
    with pytest.raises(ValueError, match=r"expected a \.csv, \.tsv"):
        data.load_split("sst-2", "train", source=str(bad))


def test_tokenize_and_dynamic_padding(tmp_path):
    tok = tiny_tokenizer(str(tmp_path))
    ds = data.load_glue_split("mrpc", write_mrpc(str(tmp_path)), "train")
    enc = data.prepare_dataset(ds, name="train_data", tokenizer=tok, max_seq_length=8, num_labels=2)
    assert set(enc.column_names) == {"input_ids", "attention_mask", "token_type_ids", "labels"}
    assert max(len(x) for x in enc["input_ids"]) == 8  # 5 + 4 words + 3 specials truncated to 8
    rows = [{"input_ids": [2, 7, 3], "attention_mask": [1, 1, 1], "labels": 1}, {"input_ids": [2, 3], "attention_mask": [1, 1], "labels": 0}]
    batch = data.Collator(pad_token_id=0)(rows)
    assert batch["input_ids"].tolist() == [[2, 7, 3], [2, 3, 0]]
    assert batch["attention_mask"].tolist() == [[1, 1, 1], [1, 1, 0]] and batch["labels"].dtype == torch.long
    with pytest.raises(ValueError, match="pass tokenizer="):
        data.prepare_dataset(ds, name="train_data", tokenizer=None, max_seq_length=8, num_labels=2)
    with pytest.raises(ValueError, match=r"train_data: label 2 is outside 0\.\.1"):
        data.prepare_dataset(enc.map(lambda r: {"labels": 2}), name="train_data", tokenizer=None, max_seq_length=8, num_labels=2)


def test_epoch_order_is_a_seeded_pure_function():
    a, b = data.epoch_order(10, 42, 3), data.epoch_order(10, 42, 3)
    assert np.array_equal(a, b) and sorted(a.tolist()) == list(range(10))
    assert not np.array_equal(a, data.epoch_order(10, 42, 4))


def test_metrics_match_known_values():
    labels = np.array([1, 1, 0, 0, 1, 0])
    logits = np.array([[0, 1], [1, 0], [1, 0], [0, 1], [0, 1], [1, 0]], dtype=float)
    m = metrics.compute_metrics("mrpc", logits, labels)
    assert m["accuracy"] == pytest.approx(4 / 6) and m["f1"] == pytest.approx(2 * 2 / (2 * 2 + 1 + 1))
    assert metrics.compute_metrics("cola", logits, labels)["mcc"] == pytest.approx((2 * 2 - 1 * 1) / 9)
    x = np.array([0.1, 0.4, 0.4, 2.0, 1.5])
    y = np.array([0.0, 1.0, 2.0, 5.0, 3.0])
    scipy_stats = pytest.importorskip("scipy.stats")
    r = metrics.compute_metrics("sts-b", x[:, None], y)
    assert r["pearson"] == pytest.approx(scipy_stats.pearsonr(x, y)[0])
    assert r["spearman"] == pytest.approx(scipy_stats.spearmanr(x, y)[0])
    assert metrics.main_metric("mrpc") == "accuracy" and metrics.main_metric("cola") == "mcc"


def test_the_test_tokenizer_knows_its_words(tmp_path):
    """The trainer and CLI tests train on real token ids, not on [CLS] [UNK] ... [SEP]."""
    from tiny_bert import SPECIAL, WORDS

    tok = tiny_tokenizer(str(tmp_path))
    assert len(tok) == len(SPECIAL) + len(WORDS)
    assert tok("good movie")["input_ids"] == [2, 5, 7, 3]
    assert tok("Bad", "FILM")["input_ids"] == [2, 6, 3, 8, 3]
