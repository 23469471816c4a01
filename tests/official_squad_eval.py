"""The official SQuAD evaluation scripts' logic, restated for the tests (evaluate-v1.1.py and evaluate-v2.0.py
from the SQuAD site, written again here from their published behaviour, not copied), file in, JSON out:

    python tests/official_squad_eval.py DATASET.json predictions.json [--v2 [--na-prob-file null_odds.json]]

v1.1: every question of the dataset file counts (a missing prediction scores 0); EM and F1 are the best over
the gold answers as given, and an answer or prediction that normalises to nothing shares no token (F1 0).
v2.0: gold answers that normalise to "" are dropped, and a question left with none is answered only by "";
HasAns/NoAns split by whether the question has answers in the file; with --na-prob-file, the scores past the
no-answer threshold (1.0) count as "no answer", and best_exact/best_f1 are the best totals over thresholds on
the raw scores. Scores are percentages, as the scripts print them.
"""
from __future__ import annotations

import argparse
import collections
import json
import re
import string
import sys


def normalize(text):
    text = "".join(c for c in text.lower() if c not in set(string.punctuation))
    return " ".join(re.sub(r"\b(a|an|the)\b", " ", text).split())


def f1_v1(prediction, gold):
    p, g = normalize(prediction).split(), normalize(gold).split()
    same = sum((collections.Counter(p) & collections.Counter(g)).values())
    if same == 0:
        return 0.0
    precision, recall = same / len(p), same / len(g)
    return 2 * precision * recall / (precision + recall)


def f1_v2(prediction, gold):
    p, g = normalize(prediction).split(), normalize(gold).split()
    if not p or not g:
        return float(p == g)
    return f1_v1(prediction, gold)


def questions(dataset):
    for article in dataset:
        for paragraph in article["paragraphs"]:
            yield from paragraph["qas"]


def evaluate_v1(dataset, predictions):
    em = f1 = total = 0
    for qa in questions(dataset):
        total += 1
        if qa["id"] not in predictions:
            print(f"Unanswered question {qa['id']} will receive score 0.", file=sys.stderr)
            continue
        golds = [a["text"] for a in qa["answers"]]
        pred = predictions[qa["id"]]
        em += max(float(normalize(pred) == normalize(g)) for g in golds)
        f1 += max(f1_v1(pred, g) for g in golds)
    return {"exact_match": 100.0 * em / total, "f1": 100.0 * f1 / total}


def _best_thresh(preds, scores, na_probs, has_ans):
    num_no_ans = sum(1 for q in has_ans if not has_ans[q])
    cur = best = num_no_ans
    best_thresh = 0.0
    for q in sorted(na_probs, key=lambda k: na_probs[k]):
        if q not in scores:
            continue
        if has_ans[q]:
            diff = scores[q]
        else:
            diff = -1 if preds[q] else 0
        cur += diff
        if cur > best:
            best, best_thresh = cur, na_probs[q]
    return 100.0 * best / len(scores), best_thresh


def evaluate_v2(dataset, predictions, na_probs=None, na_prob_thresh=1.0):
    has_ans = {qa["id"]: bool(qa["answers"]) for qa in questions(dataset)}
    exact, f1 = {}, {}
    for qa in questions(dataset):
        golds = [a["text"] for a in qa["answers"] if normalize(a["text"])] or [""]
        if qa["id"] not in predictions:
            print(f"Missing prediction for {qa['id']}", file=sys.stderr)
            continue
        pred = predictions[qa["id"]]
        exact[qa["id"]] = max(float(normalize(pred) == normalize(g)) for g in golds)
        f1[qa["id"]] = max(f1_v2(pred, g) for g in golds)
    probs = na_probs if na_probs is not None else {q: 0.0 for q in predictions}
    exact_t = {q: float(not has_ans[q]) if probs[q] > na_prob_thresh else s for q, s in exact.items()}
    f1_t = {q: float(not has_ans[q]) if probs[q] > na_prob_thresh else s for q, s in f1.items()}

    def part(ids):
        return {"exact": 100.0 * sum(exact_t[q] for q in ids) / len(ids),
                "f1": 100.0 * sum(f1_t[q] for q in ids) / len(ids), "total": len(ids)}

    out = part(list(has_ans))
    for name, want in (("HasAns", True), ("NoAns", False)):
        ids = [q for q in has_ans if has_ans[q] == want]
        if ids:
            out.update({f"{name}_{k}": v for k, v in part(ids).items()})
    if na_probs is not None:
        for key, raw in (("exact", exact), ("f1", f1)):
            best, thresh = _best_thresh(predictions, raw, na_probs, has_ans)
            out.update({f"best_{key}": best, f"best_{key}_thresh": thresh})
    return out


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("dataset_file")
    p.add_argument("prediction_file")
    p.add_argument("--v2", action="store_true", help="SQuAD v2.0 rules")
    p.add_argument("--na-prob-file")
    p.add_argument("--na-prob-thresh", type=float, default=1.0)
    args = p.parse_args(argv)
    with open(args.dataset_file) as f:
        dataset = json.load(f)["data"]
    with open(args.prediction_file) as f:
        predictions = json.load(f)
    if args.v2:
        na_probs = None
        if args.na_prob_file:
            with open(args.na_prob_file) as f:
                na_probs = json.load(f)
        result = evaluate_v2(dataset, predictions, na_probs, args.na_prob_thresh)
    else:
        result = evaluate_v1(dataset, predictions)
    print(json.dumps(result))
    return result


if __name__ == "__main__":
    main()
