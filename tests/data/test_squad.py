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


def _official(pred, answers, version_2):
    """The official scripts' rules, restated (evaluate-v1.1.py, evaluate-v2.0.py): per question (EM, F1)."""
    import collections
    import re
    import string

    def norm(t):
        t = "".join(c for c in t.lower() if c not in set(string.punctuation))
        return " ".join(re.sub(r"\b(a|an|the)\b", " ", t).split())

    def f1(p, g):
        pt, gt = norm(p).split(), norm(g).split()
        if version_2 and (not pt or not gt):
            return float(pt == gt)
        same = sum((collections.Counter(pt) & collections.Counter(gt)).values())
        return 0.0 if same == 0 else 2 * (same / len(pt)) * (same / len(gt)) / (same / len(pt) + same / len(gt))

    golds = ([a for a in answers if norm(a)] or [""]) if version_2 else answers
    return max(float(norm(pred) == norm(g)) for g in golds), max(f1(pred, g) for g in golds)


def test_official_normalisation_and_scores():
    assert normalize_answer("The  Cat, sat!") == "cat sat"
    v1 = [{"id": "a", "answers": {"text": ["a cat sat", "dog"], "answer_start": [0, 0]}},
          {"id": "b", "answers": {"text": ["The"], "answer_start": [0]}},  # normalises to ""
          {"id": "c", "answers": {"text": ["red"], "answer_start": [0]}}]
    preds = {"a": "the cat", "b": "a", "c": "red!"}  # b: "" against "": the v1.1 script gives F1 0 (and EM 1)
    m = squad_metrics(preds, v1)
    want = [_official(preds[e["id"]], e["answers"]["text"], False) for e in v1]
    assert m == pytest.approx({"exact_match": sum(w[0] for w in want) / 3, "f1": sum(w[1] for w in want) / 3})
    assert m["f1"] == pytest.approx((2 / 3 + 0 + 1) / 3) and m["exact_match"] == pytest.approx(2 / 3)
    with pytest.raises(ValueError, match="no prediction for question 'b'"):
        squad_metrics({"a": "dog"}, v1)
    with pytest.raises(ValueError, match="has no answer"):
        squad_metrics({"x": ""}, [{"id": "x", "answers": {"text": [], "answer_start": []}}])


def test_official_v2_scores_and_has_answer_split():
    v2 = [{"id": "a", "answers": {"text": ["a cat sat", "dog"], "answer_start": [0, 0]}},
          {"id": "b", "answers": {"text": [], "answer_start": []}},
          {"id": "c", "answers": {"text": ["The"], "answer_start": [0]}}]  # HasAns: it has an answer
    preds = {"a": "the cat", "b": "", "c": "an"}
    m = squad_metrics(preds, v2, version_2=True)
    want = {e["id"]: _official(preds[e["id"]], e["answers"]["text"], True) for e in v2}
    assert m["exact"] == pytest.approx(sum(w[0] for w in want.values()) / 3)
    assert m["f1"] == pytest.approx(sum(w[1] for w in want.values()) / 3) and m["total"] == 3
    assert (m["HasAns_total"], m["NoAns_total"]) == (2, 1)  # by having answers, not by what they normalise to
    assert m["HasAns_f1"] == pytest.approx((want["a"][1] + want["c"][1]) / 2) and m["NoAns_f1"] == 1.0
    assert m["HasAns_f1"] == pytest.approx((2 / 3 + 1) / 2)


def _squad_file(path, questions):
    """A SQuAD file of one paragraph per (id, answers) pair, the answers placed in their own context."""
    paragraphs = []
    for qid, answers in questions:
        context = " ".join(answers) + " and more words here" if answers else "nothing to find here"
        starts, at = [], 0
        for a in answers:
            starts.append(context.index(a, at))
            at = starts[-1] + len(a)
        paragraphs.append({"context": context, "qas": [{"id": qid, "question": "q?", "is_impossible": not answers,
                                                         "answers": [{"text": a, "answer_start": s}
                                                                     for a, s in zip(answers, starts)]}]})
    path.write_text(json.dumps({"version": "x", "data": [{"title": "t", "paragraphs": paragraphs}]}))
    return str(path)


@pytest.mark.parametrize("version_2", [False, True])
def test_library_scores_equal_the_official_scripts_on_written_files(tmp_path, version_2):
    """The edge cases of the issue: a gold that normalises to "" ("The"), an empty prediction, several golds,
    punctuation and articles; v2.0 adds questions without answers, and the null-odds threshold search."""
    import official_squad_eval

    from mlkd_fast.data.squad import official_json

    questions = [("a", ["a cat sat", "dog"]), ("b", ["The"]), ("c", ["red"]), ("d", ["The big one", "big"]),
                 ("e", ["blue sky"])] + ([("f", []), ("g", [])] if version_2 else [])
    preds = {"a": "the cat", "b": "", "c": "red!", "d": "an", "e": "sky blue", "f": "", "g": "x"}
    preds = {q: preds[q] for q, _ in questions}
    odds = {"a": -1.0, "b": 2.0, "c": -3.0, "d": 0.5, "e": 0.1, "f": 4.0, "g": -0.2}
    dataset = _squad_file(tmp_path / "data.json", questions)
    (tmp_path / "pred.json").write_text(json.dumps(preds))
    (tmp_path / "odds.json").write_text(json.dumps({q: odds[q] for q in preds}))
    args = [dataset, str(tmp_path / "pred.json")] + (["--v2"] if version_2 else [])
    want = official_squad_eval.main(args)
    ours = official_json(squad_metrics(preds, read_squad_json(dataset), version_2=version_2,
                                       null_odds={q: odds[q] for q in preds} if version_2 else None))
    assert {k: ours[k] for k in want} == pytest.approx(want)
    assert set(want) <= set(ours)
    if version_2:  # the threshold search reads the null odds (the scores as they are otherwise)
        best = official_squad_eval.main(args + ["--na-prob-file", str(tmp_path / "odds.json")])
        assert {k: ours[k] for k in best if k.startswith("best")} == pytest.approx(
            {k: v for k, v in best.items() if k.startswith("best")})
        assert (ours["HasAns_total"], ours["NoAns_total"]) == (5, 2)
    else:  # "b": "" against the gold "The" scores F1 0 under v1.1 (EM 1), F1 1 under v2.0
        assert want["f1"] == pytest.approx(100 * (2 / 3 + 0 + 1 + 0 + 1) / 5)
