"""SQuAD reading, windows, best spans and the official EM/F1, on examples the tests write and check by hand."""
import json

import numpy as np
import pytest
from tiny_bert import tiny_tokenizer

from mlkd_fast.data.squad import best_answers, normalize_answer, qa_windows, read_squad_json, squad_metrics

CONTEXT = "the movie was good and the plot was great but the actor was very bad"


def write_squad(path, v2=False):
    qas = [
        {"id": "q1", "question": "was the movie good", "answers": [{"text": "good", "answer_start": CONTEXT.index("good")}]},
        {"id": "q2", "question": "who was bad", "answers": [{"text": "the actor", "answer_start": CONTEXT.index("the actor")}]},
    ]
    if v2:
        qas.append({"id": "q3", "question": "was the film awful", "answers": [], "is_impossible": True})
    data = {"version": "2.0" if v2 else "1.1", "data": [{"title": "t", "paragraphs": [{"context": CONTEXT, "qas": qas}]}]}
    path.write_text(json.dumps(data))
    return str(path)


def test_read_and_reject_a_misplaced_answer(tmp_path):
    ds = read_squad_json(write_squad(tmp_path / "v2.json", v2=True))
    assert ds["id"] == ["q1", "q2", "q3"] and ds["answers"][2] == {"text": [], "answer_start": []}
    bad = json.loads((tmp_path / "v2.json").read_text())
    bad["data"][0]["paragraphs"][0]["qas"][0]["answers"][0]["answer_start"] = 0
    (tmp_path / "bad.json").write_text(json.dumps(bad))
    with pytest.raises(ValueError, match="'good' is not at character 0"):
        read_squad_json(str(tmp_path / "bad.json"))


def test_windows_inside_across_and_without_answers(tmp_path):
    tok = tiny_tokenizer(str(tmp_path))
    ds = read_squad_json(write_squad(tmp_path / "v2.json", v2=True))
    # 16 tokens: [CLS] question [SEP] context-slice [SEP]; the 15-word context needs several overlapping windows
    train = qa_windows(ds, tok, train=True, max_length=16, stride=4, max_query_length=6)
    dev = qa_windows(ds, tok, train=False, max_length=16, stride=4, max_query_length=6)
    assert len(train) == len(dev) > 3
    found = {}
    for w in range(len(train)):
        ids, s, e = train[w]["input_ids"], train[w]["start_positions"], train[w]["end_positions"]
        assert len(ids) <= 16
        qid = dev[w]["example_id"]
        if s:
            found.setdefault(qid, []).append(tok.decode(ids[s:e + 1]))
        else:
            assert e == 0  # no answer in this window: both at [CLS]
    assert found["q1"] and set(found["q1"]) == {"good"}
    assert found["q2"] and set(found["q2"]) == {"the actor"}
    assert "q3" not in found  # impossible: every window points at [CLS]
    # some window of q2 holds only part of "the actor" (the boundary cuts it): it gets (0, 0), not half a span
    q2 = [w for w in range(len(dev)) if dev[w]["example_id"] == "q2"]
    assert any(train[w]["start_positions"] == 0 for w in q2)
    # evaluation windows keep character offsets for context tokens only
    offsets = dev[0]["offset_mapping"]
    assert offsets[0] is None and any(o is not None for o in offsets)


def test_best_answers_by_hand(tmp_path):
    tok = tiny_tokenizer(str(tmp_path))
    ds = read_squad_json(write_squad(tmp_path / "v2.json", v2=True))
    dev = qa_windows(ds, tok, train=False, max_length=64, stride=16, max_query_length=16)
    assert len(dev) == 3  # one window per question
    L = max(len(x) for x in dev["input_ids"])
    start, end = np.zeros((3, L)), np.zeros((3, L))
    for w in range(3):
        offsets = dev[w]["offset_mapping"]
        first = next(i for i, o in enumerate(offsets) if o is not None)
        # point at context tokens 2..3 ("was good"): start +5, end +5; [CLS] (null) gets 2 + 2
        start[w, first + 2], end[w, first + 3] = 5.0, 5.0
        start[w, 0], end[w, 0] = 2.0, 2.0
    assert best_answers(ds, dev, start, end, version_2=False) == {"q1": "was good", "q2": "was good", "q3": "was good"}
    start[2, :], end[2, :] = 0.0, 0.0
    start[2, 0], end[2, 0] = 3.0, 3.0  # q3: no answer scores 6 > any span's
    preds = best_answers(ds, dev, start, end, version_2=True)
    assert preds["q3"] == "" and preds["q1"] == "was good"
    assert best_answers(ds, dev, start, end, version_2=True, null_threshold=100.0)["q3"] != ""


def test_official_normalisation_and_scores():
    assert normalize_answer("The  Cat, sat!") == "cat sat"
    examples = [{"id": "a", "answers": {"text": ["a cat sat", "dog"], "answer_start": [0, 0]}},
                {"id": "b", "answers": {"text": [], "answer_start": []}}]
    m = squad_metrics({"a": "the cat", "b": ""}, examples)
    # a: precision 1 (cat), recall 1/2 (cat sat) -> F1 2/3; EM 0. b: "" for an unanswerable question -> 1, 1
    assert m["exact_match"] == pytest.approx(0.5) and m["f1"] == pytest.approx((2 / 3 + 1) / 2)
    assert m["has_ans_f1"] == pytest.approx(2 / 3) and m["no_ans_f1"] == 1.0
    assert squad_metrics({"a": "dog", "b": "cat"}, examples)["exact_match"] == pytest.approx(0.5)
    with pytest.raises(ValueError, match="no prediction for question 'b'"):
        squad_metrics({"a": "dog"}, examples)
