"""Extractive question answering (SQuAD v1.1 and v2.0): examples, windows, best spans, official EM/F1.

    SQuAD JSON (or a datasets hub name) -> examples: id, question, context, answers {text, answer_start}
    -> windows: [CLS] question [SEP] context-slice [SEP], max_length 384, stride 128 (overlap between
       slices), the question cut to max_query_length tokens; each window keeps its example id and the
       character offsets of its context tokens
       training: start/end token positions of the first answer, or 0 ([CLS]) when the answer is not inside
       the window or the question has none (v2.0)
    -> model start/end logits per window -> the best span per example over its windows (start <= end,
       length <= max_answer_length, inside the context), "" when the no-answer score beats it by more than
       the threshold (v2.0)
    -> exact match and F1 after the official normalisation (lower case, no punctuation, no articles,
       single spaces), the max over the gold answers; a question without answers scores 1 only for "".
"""
from __future__ import annotations

import collections
import json
import os
import re
import string
from dataclasses import dataclass
from typing import Any, Dict, List, Optional

import numpy as np

from mlkd_fast.errors import InputError

WINDOW = dict(max_length=384, stride=128, max_query_length=64)


# ----------------------------------------------------------------------------- reading


def read_squad_json(path: str):
    """A SQuAD-format JSON file (v1.1 or v2.0) as a datasets.Dataset of examples."""
    import datasets

    if not os.path.isfile(path):
        raise InputError(f"SQuAD file {path!r} does not exist")
    try:
        with open(path, encoding="utf-8") as f:
            data = json.load(f)["data"]
    except (json.JSONDecodeError, KeyError, TypeError) as e:
        raise InputError(f"{path!r} is not a SQuAD-format JSON file (a 'data' list of articles): {e}") from e
    rows = {"id": [], "question": [], "context": [], "answers": [], "article": []}
    for number, article in enumerate(data):
        for para in article["paragraphs"]:
            for qa in para["qas"]:
                answers = [] if qa.get("is_impossible") else qa.get("answers", [])
                for a in answers:
                    if para["context"][a["answer_start"]:a["answer_start"] + len(a["text"])] != a["text"]:
                        raise InputError(f"{path}: question {qa['id']!r}: answer {a['text']!r} is not at "
                                         f"character {a['answer_start']} of its context")
                rows["id"].append(str(qa["id"]))
                rows["question"].append(qa["question"])
                rows["context"].append(para["context"])
                rows["answers"].append({"text": [a["text"] for a in answers],
                                        "answer_start": [int(a["answer_start"]) for a in answers]})
                rows["article"].append(number)
    if not rows["id"]:
        raise InputError(f"{path!r} holds no questions")
    return datasets.Dataset.from_dict(rows)


def held_out_articles(examples, held_out: int, seed: int) -> List[int]:
    """The article numbers (positions in the file's `data` list) that split_by_article holds out, sorted."""
    if "article" not in examples.column_names:
        raise InputError("splitting by article needs the examples of one SQuAD JSON file (read_squad_json)")
    articles = sorted(set(examples["article"]))
    if not 0 < held_out < len(articles):
        raise InputError(f"held-out articles must be in 1..{len(articles) - 1} (the file has {len(articles)}), "
                         f"got {held_out}")
    return sorted(np.random.default_rng(seed).choice(articles, size=held_out, replace=False).tolist())


def split_by_article(examples, held_out: int, seed: int):
    """(train, held-out) examples of one SQuAD file split by article: `held_out` articles, drawn with `seed`, on
    the held-out side, every other article on the training side; no article (so no paragraph) on both."""
    chosen = set(held_out_articles(examples, held_out, seed))
    keep = np.array([a in chosen for a in examples["article"]])
    return examples.select(np.flatnonzero(~keep)), examples.select(np.flatnonzero(keep))


def squad_subset(path: str, articles) -> Dict[str, Any]:
    """The SQuAD JSON object of `path` with only the given articles (numbers as in held_out_articles), in file
    order: the dataset file the official evaluation scripts take for a held-out split."""
    with open(path, encoding="utf-8") as f:
        whole = json.load(f)
    wanted = set(int(a) for a in articles)
    return dict(whole, data=[a for i, a in enumerate(whole["data"]) if i in wanted])


def load_squad_split(source: str, split: str, version_2: bool):
    """A SQuAD JSON file, or a datasets hub name ("squad", "squad_v2"; needs network) and split."""
    if os.path.exists(source):
        return read_squad_json(source)
    import datasets

    try:
        ds = datasets.load_dataset(source, split={"dev": "validation"}.get(split, split))
    except Exception as e:
        raise InputError(f"{source!r} is neither a SQuAD JSON file nor a loadable hub dataset: {type(e).__name__}: {e}") from e
    missing = {"id", "question", "context", "answers"} - set(ds.column_names)
    if missing:
        raise InputError(f"{source!r} lacks the SQuAD columns {sorted(missing)}")
    return ds


# ----------------------------------------------------------------------------- windows


def _cut_question(tokenizer, question: str, max_query_length: int) -> str:
    tokens = tokenizer.tokenize(question)
    return question if len(tokens) <= max_query_length else tokenizer.convert_tokens_to_string(tokens[:max_query_length])


def qa_windows(examples, tokenizer, *, train: bool, max_length: int = 384, stride: int = 128,
               max_query_length: int = 64):
    """Tokenised windows of `examples` (a Dataset of SQuAD examples). Training windows carry
    start_positions/end_positions; evaluation windows carry example_id and offset_mapping (None outside
    the context) for post-processing."""
    if not getattr(tokenizer, "is_fast", False):
        raise InputError("question answering needs a fast tokenizer (character offsets of the tokens)")
    if tokenizer.padding_side != "right":
        raise InputError("question answering windows need a tokenizer that pads on the right")

    def encode(batch):
        questions = [_cut_question(tokenizer, q.strip(), max_query_length) for q in batch["question"]]
        enc = tokenizer(questions, batch["context"], truncation="only_second", max_length=max_length,
                        stride=stride, return_overflowing_tokens=True, return_offsets_mapping=True)
        source = enc.pop("overflow_to_sample_mapping")
        out = {k: enc[k] for k in ("input_ids", "attention_mask", "token_type_ids") if k in enc}
        if train:
            out["start_positions"], out["end_positions"] = [], []
        else:
            out["example_id"], out["offset_mapping"] = [], []
        for w, offsets in enumerate(enc["offset_mapping"]):
            seq = enc.sequence_ids(w)
            ex = source[w]
            if train:
                start, end = _answer_tokens(batch["answers"][ex], offsets, seq)
                out["start_positions"].append(start)
                out["end_positions"].append(end)
            else:
                out["example_id"].append(batch["id"][ex])
                out["offset_mapping"].append([o if seq[i] == 1 else None for i, o in enumerate(offsets)])
        return out

    return examples.map(encode, batched=True, remove_columns=examples.column_names)


def _answer_tokens(answers, offsets, seq) -> tuple:
    """(start, end) token positions of the first answer inside this window, else (0, 0)."""
    if not answers["text"]:
        return 0, 0
    a_start = answers["answer_start"][0]
    a_end = a_start + len(answers["text"][0])
    context = [i for i, s in enumerate(seq) if s == 1]
    first, last = context[0], context[-1]
    if offsets[first][0] > a_start or offsets[last][1] < a_end:
        return 0, 0  # the answer is not (entirely) inside this window
    start = first
    while start <= last and offsets[start][0] <= a_start:
        start += 1
    end = last
    while end >= first and offsets[end][1] >= a_end:
        end -= 1
    return start - 1, end + 1


def window_sizes(max_length: int) -> Dict[str, int]:
    """Stride and question length for windows of max_length tokens: a third of the window as stride (128 at the
    usual 384), and questions cut only beyond BERT's reference 64 tokens, or where a longer question would leave
    the context less room than the stride (short windows)."""
    stride = max_length // 3
    return dict(max_length=max_length, stride=stride, max_query_length=max(1, min(64, max_length - stride - 4)))


class QADev:
    """A question-answering dev set: its examples (for the answers) and their evaluation windows (for the
    model). Behaves as the windows where a tokenised dataset is expected (length, columns, rows)."""

    def __init__(self, examples, windows):
        self.examples, self.windows = examples, windows

    @property
    def column_names(self):
        return self.windows.column_names

    def __len__(self) -> int:
        return len(self.windows)

    def __getitem__(self, key):
        return self.windows[key]


def prepare_qa(train_data, eval_data, *, tokenizer, max_length: int):
    """(training windows, QADev or None) from datasets of SQuAD examples."""
    import datasets

    for name, ds in (("train_data", train_data), ("eval_data", eval_data)):
        if ds is None:
            continue
        if not isinstance(ds, datasets.Dataset):
            raise InputError(f"{name} must be a datasets.Dataset of SQuAD examples, got {type(ds).__name__}")
        missing = {"id", "question", "context", "answers"} - set(ds.column_names)
        if missing:
            raise InputError(f"{name} lacks the SQuAD columns {sorted(missing)} (columns: {ds.column_names})")
    if tokenizer is None:
        raise InputError("question answering needs the tokenizer (tokenizer=) to cut the windows")
    sizes = window_sizes(max_length)
    train = qa_windows(train_data, tokenizer, train=True, **sizes) if train_data is not None else None
    dev = None if eval_data is None else QADev(eval_data, qa_windows(eval_data, tokenizer, train=False, **sizes))
    return train, dev


# ----------------------------------------------------------------------------- best spans


@dataclass
class QAPredictions:
    """What the span search gives per question id: the predicted text ("" = no answer, v2.0), the n best
    candidates (text, start_logit, end_logit, probability: softmax over the n best scores, as the reference
    scripts write them) and, for v2.0, the null odds (null score minus the best span's score)."""

    text: Dict[str, str]
    nbest: Dict[str, List[Dict]]
    null_odds: Dict[str, float]

    def files(self, version_2: bool) -> Dict[str, Any]:
        """The reference scripts' files, name -> JSON object: predictions.json, nbest_predictions.json and
        (v2.0) null_odds.json (written by train/evaluate.py, atomically)."""
        files = {"predictions.json": self.text, "nbest_predictions.json": self.nbest}
        if version_2:
            files["null_odds.json"] = self.null_odds
        return files


def span_predictions(examples, windows, start_logits: np.ndarray, end_logits: np.ndarray, *, version_2: bool,
                     n_best: int = 20, max_answer_length: int = 30, null_threshold: float = 0.0) -> QAPredictions:
    """The best spans of every question over all its windows: for each window, the n_best start and end
    logits paired (end >= start, at most max_answer_length tokens, inside the context); v2.0 answers ""
    when the null score ([CLS] start + end, the lowest over the windows) beats the best span by more than
    null_threshold."""
    by_example = collections.defaultdict(list)
    for w, ex_id in enumerate(windows["example_id"]):
        by_example[ex_id].append(w)
    offsets_all = windows["offset_mapping"]
    text, nbest, null_odds = {}, {}, {}
    for ex in examples:
        candidates, null_score = [], np.inf
        for w in by_example.get(ex["id"], []):
            s, e, offsets = start_logits[w], end_logits[w], offsets_all[w]
            null_score = min(null_score, float(s[0] + e[0]))
            starts = np.argsort(s)[::-1][:n_best]
            ends = np.argsort(e)[::-1][:n_best]
            for i in starts:
                for j in ends:
                    if i >= len(offsets) or j >= len(offsets) or offsets[i] is None or offsets[j] is None:
                        continue
                    if j < i or j - i + 1 > max_answer_length:
                        continue
                    candidates.append((float(s[i] + e[j]), float(s[i]), float(e[j]),
                                       ex["context"][offsets[i][0]:offsets[j][1]]))
        # the first of equal scores wins, as in the search order (stable sort)
        candidates = sorted(candidates, key=lambda c: -c[0])[:n_best]
        best_score = candidates[0][0] if candidates else -np.inf
        best_text = candidates[0][3] if candidates else ""
        if version_2 and (best_score == -np.inf or null_score - best_score > null_threshold):
            best_text = ""
        text[ex["id"]] = best_text
        scores = np.array([c[0] for c in candidates]) if candidates else np.zeros(0)
        probs = np.exp(scores - scores.max()) / np.exp(scores - scores.max()).sum() if candidates else scores
        nbest[ex["id"]] = [{"text": c[3], "probability": float(p), "start_logit": c[1], "end_logit": c[2]}
                           for c, p in zip(candidates, probs)] or [{"text": "", "probability": 1.0,
                                                                    "start_logit": 0.0, "end_logit": 0.0}]
        null_odds[ex["id"]] = float(null_score - best_score) if candidates else float("inf")
    return QAPredictions(text, nbest, null_odds)


def best_answers(examples, windows, start_logits: np.ndarray, end_logits: np.ndarray, *, version_2: bool,
                 n_best: int = 20, max_answer_length: int = 30, null_threshold: float = 0.0) -> Dict[str, str]:
    """Example id -> predicted answer text ("" = no answer, v2.0 only): span_predictions(...).text."""
    return span_predictions(examples, windows, start_logits, end_logits, version_2=version_2, n_best=n_best,
                            max_answer_length=max_answer_length, null_threshold=null_threshold).text


# ----------------------------------------------------------------------------- official metric


def normalize_answer(text: str) -> str:
    text = text.lower()
    text = "".join(ch for ch in text if ch not in set(string.punctuation))
    text = re.sub(r"\b(a|an|the)\b", " ", text)
    return " ".join(text.split())


def _overlap_f1(p: List[str], g: List[str]) -> float:
    common = collections.Counter(p) & collections.Counter(g)
    same = sum(common.values())
    if same == 0:
        return 0.0
    precision, recall = same / len(p), same / len(g)
    return 2 * precision * recall / (precision + recall)


def _f1_v1(prediction: str, gold: str) -> float:
    """evaluate-v1.1.py: token-overlap F1; an empty prediction or gold (after normalisation) shares no token: 0."""
    return _overlap_f1(normalize_answer(prediction).split(), normalize_answer(gold).split())


def _f1_v2(prediction: str, gold: str) -> float:
    """evaluate-v2.0.py: as v1.1, except that when either side is empty, F1 is 1 if both are and 0 otherwise."""
    p, g = normalize_answer(prediction).split(), normalize_answer(gold).split()
    if not p or not g:
        return float(p == g)
    return _overlap_f1(p, g)


def squad_metrics(predictions: Dict[str, str], examples, version_2: bool = False,
                  null_odds: Optional[Dict[str, float]] = None) -> Dict[str, float]:
    """The official SQuAD scores, as fractions (x 100 for the official scripts' percent).

    v1.1 (evaluate-v1.1.py): `exact_match`, `f1`: the best over the gold answers as given, an empty normalised
    prediction or gold scoring F1 0. v2.0 (evaluate-v2.0.py): gold answers that normalise to "" are dropped and a
    question without any is answered correctly only by ""; keys `exact`, `f1`, `total`, and `HasAns_*` /
    `NoAns_*` split by whether the question has answers at all (not by what they normalise to); with the null
    odds, also `best_exact`/`best_f1` and their thresholds (the script's find_best_thresh)."""
    em, f1, has = [], [], []
    for ex in examples:
        pred = predictions.get(ex["id"])
        if pred is None:
            raise InputError(f"no prediction for question {ex['id']!r}")
        answers = list(ex["answers"]["text"])
        if version_2:
            golds = [a for a in answers if normalize_answer(a)] or [""]
            em.append(max(float(normalize_answer(pred) == normalize_answer(g)) for g in golds))
            f1.append(max(_f1_v2(pred, g) for g in golds))
        else:
            if not answers:
                raise InputError(f"question {ex['id']!r} has no answer: a SQuAD v1.1 file answers every question "
                                 "(use the task squad_v2 for unanswerable questions)")
            em.append(max(float(normalize_answer(pred) == normalize_answer(g)) for g in answers))
            f1.append(max(_f1_v1(pred, g) for g in answers))
        has.append(bool(answers))
    if not version_2:
        return {"exact_match": float(np.mean(em)), "f1": float(np.mean(f1))}
    em, f1, has = np.array(em), np.array(f1), np.array(has)
    out = {"exact": float(em.mean()), "f1": float(f1.mean()), "total": int(len(em))}
    for name, part in (("HasAns", has), ("NoAns", ~has)):
        if part.any():
            out.update({f"{name}_exact": float(em[part].mean()), f"{name}_f1": float(f1[part].mean()),
                        f"{name}_total": int(part.sum())})
    if null_odds is not None:
        ids = [ex["id"] for ex in examples]
        for key, scores in (("exact", em), ("f1", f1)):
            best, thresh = _best_threshold(ids, predictions, dict(zip(ids, scores)), null_odds, dict(zip(ids, has)))
            out.update({f"best_{key}": best, f"best_{key}_thresh": thresh})
    return out


def official_json(metrics: Dict[str, float]) -> Dict[str, float]:
    """squad_metrics as the official scripts print them: scores in percent, counts and thresholds as they are."""
    return {k: v if (k.endswith("total") or k.endswith("_thresh")) else 100.0 * v for k, v in metrics.items()}


def _best_threshold(ids, predictions, scores, null_odds, has_answer):
    """evaluate-v2.0.py's find_best_thresh: answering "" for every question whose null odds exceed a threshold,
    the best total score over thresholds (as a fraction) and that threshold."""
    score = best = float(sum(1 for q in ids if not has_answer[q]))
    thresh = 0.0
    for q in sorted(ids, key=lambda q: null_odds[q]):
        if has_answer[q]:
            score += scores[q]
        else:
            score += -1.0 if predictions[q] else 0.0
        if score > best:
            best, thresh = score, float(null_odds[q])
    return best / len(ids), thresh


__all__ = ["WINDOW", "QADev", "QAPredictions", "span_predictions", "split_by_article", "held_out_articles",
           "squad_subset", "official_json", "window_sizes", "prepare_qa", "read_squad_json", "load_squad_split", "qa_windows", "best_answers", "normalize_answer",
           "squad_metrics"]
