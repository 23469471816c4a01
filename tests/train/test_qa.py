"""Question answering through finetune, distill (MLKD stage 1 + stage 2 with L_KD on the start and end
distributions) and the CLI, on a tiny BERT and SQuAD files the test writes."""
import json
import math

import pytest
import torch
import official_squad_eval
from tiny_bert import WORDS, one_thread, tiny_config, tiny_tokenizer  # noqa: F401 (fixture)

from mlkd_fast import DistillConfig, FinetuneConfig, build_student, distill, finetune
from mlkd_fast.cli import main
from mlkd_fast.data.squad import read_squad_json

pytestmark = pytest.mark.usefixtures("one_thread")


def write_squad(path, n=12, v2=False, seed=0):
    import numpy as np

    rng = np.random.default_rng(seed)
    qas_all = []
    paragraphs = []
    for p in range(n // 3):
        words = list(rng.choice(WORDS, size=20))
        context = " ".join(words)
        qas = []
        for q in range(3):
            i = int(rng.integers(0, 18))
            text = " ".join(words[i:i + 2])
            start = len(" ".join(words[:i])) + (1 if i else 0)
            qa = {"id": f"p{p}q{q}", "question": " ".join(rng.choice(WORDS, size=4)),
                  "answers": [{"text": text, "answer_start": start}]}
            if v2 and q == 2:
                qa = dict(qa, answers=[], is_impossible=True)
            qas.append(qa)
        paragraphs.append({"context": context, "qas": qas})
        qas_all += qas
    path.write_text(json.dumps({"data": [{"title": "t", "paragraphs": paragraphs}]}))
    return str(path)


def _qa_teacher(tmp_path):
    from transformers import BertForQuestionAnswering

    torch.manual_seed(0)
    return BertForQuestionAnswering(tiny_config(layers=4, hidden=32, heads=4)), tiny_tokenizer(str(tmp_path))


@pytest.mark.parametrize("version_2", [False, True])
def test_finetune_then_distill_squad(tmp_path, version_2):
    from transformers import AutoModelForQuestionAnswering

    task = "squad_v2" if version_2 else "squad"
    teacher, tok = _qa_teacher(tmp_path)
    train = read_squad_json(write_squad(tmp_path / "train.json", n=12, v2=version_2))
    dev = read_squad_json(write_squad(tmp_path / "dev.json", n=6, v2=version_2, seed=1))
    ft = finetune(teacher, train, eval_data=dev, task=task, tokenizer=tok, output_dir=str(tmp_path / "t"),
                  config=FinetuneConfig(epochs=2, batch_size=4, learning_rate=1e-3, max_seq_length=48, device="cpu"),
                  progress=False)
    official = {"exact", "f1", "total", "HasAns_f1"} if version_2 else {"exact_match", "f1"}  # the scripts' keys
    assert ft.metric == "f1" and official <= set(ft.history[-1]["metrics"])
    kept = tmp_path / "t" / "predictions"  # the kept model's predictions, in the reference scripts' files
    assert sorted(json.load(open(kept / "predictions.json"))) == sorted(dev["id"])
    assert (kept / "nbest_predictions.json").exists() and (kept / "null_odds.json").exists() == version_2
    student = build_student(teacher, 2, num_heads=2)
    cfg = DistillConfig(stage1_epochs=1, stage2_epochs=1, batch_size=4, splits=4, max_seq_length=48, device="cpu")
    res = distill(teacher, student, train, eval_data=dev, task=task, tokenizer=tok, config=cfg,
                  output_dir=str(tmp_path / "s"), backend="torch", progress=False)
    assert [h["stage"] for h in res.history] == [1, 2] and {"ss", "sc", "kd"} <= set(res.history[1])
    assert all(math.isfinite(res.history[1][k]) for k in ("ss", "sc", "kd"))
    assert 0 <= res.best_metric <= 1 and res.metric == "f1"
    assert type(AutoModelForQuestionAnswering.from_pretrained(res.student_dir)).__name__ == "BertForQuestionAnswering"


def test_kd_term_on_spans_by_hand(tmp_path):
    from mlkd_fast.train import objectives as losses
    from mlkd_fast.train.features import Features

    mask = torch.tensor([[True, True, False]])
    t = Features(start_logits=torch.tensor([[0.0, 0.0, 9.0]]), end_logits=torch.tensor([[0.0, 0.0, 9.0]]))
    s = Features(start_logits=torch.tensor([[0.0, 0.0, -9.0]]), end_logits=torch.tensor([[0.0, 0.0, 0.0]]))
    ctx = losses.LossContext(mask=mask, layer_map=(1,), projections=losses.DistillProjections(1, 1, 1),
                             targets=torch.tensor([[1, 0]]))
    # padding is out of both softmaxes: uniform over 2 real tokens on both sides -> soft CE log 2, each
    assert losses.LOSSES["kd"](t, s, ctx).item() == pytest.approx(math.log(2), rel=1e-5)
    expected = (torch.nn.functional.cross_entropy(s.start_logits, torch.tensor([1]))
                + torch.nn.functional.cross_entropy(s.end_logits, torch.tensor([0]))) / 2
    assert losses.LOSSES["ce"](None, s, ctx).item() == pytest.approx(expected.item())


def test_cli_distill_squad_reports_em_and_f1(tmp_path, capsys):
    from transformers import BertModel

    pretrained = tmp_path / "pretrained"
    torch.manual_seed(0)
    BertModel(tiny_config(layers=4, hidden=32, heads=4)).save_pretrained(pretrained)
    tiny_tokenizer(str(pretrained)).save_pretrained(pretrained)
    train, dev = write_squad(tmp_path / "train.json", n=9), write_squad(tmp_path / "dev.json", n=6, seed=1)
    data = ["--task", "squad", "--train-file", train, "--dev-file", dev, "--max-seq-length", "48", "--batch-size", "4",
            "--device", "cpu", "--no-progress"]
    assert main(["finetune", *data, "--model", str(pretrained), "--output-dir", str(tmp_path / "t"), "--epochs", "1"]) == 0
    assert main(["distill", *data, "--teacher", str(tmp_path / "t" / "model"), "--output-dir", str(tmp_path / "s"),
                 "--student-layers", "2", "--student-heads", "2", "--splits", "4", "--stage1-epochs", "1",
                 "--stage2-epochs", "1"]) == 0
    out = capsys.readouterr().out
    assert "best dev f1" in out and "exact_match=" in out
    assert main(["evaluate", "--task", "squad", "--dev-file", dev, "--model", str(tmp_path / "t" / "model"),
                 "--model", str(tmp_path / "s" / "student"), "--max-seq-length", "48", "--latency-batches", "1"]) == 0
    table = capsys.readouterr().out
    assert "exact_match" in table and "f1 retention %" in table
    assert main(["distill", "--task", "squad", "--data-dir", str(tmp_path), "--teacher", str(tmp_path / "t" / "model"),
                 "--output-dir", str(tmp_path / "x"), "--student-layers", "2"]) == 2
    assert "SQuAD JSON" in capsys.readouterr().err


def test_evaluate_writes_the_reference_files_and_squad_length_defaults(tmp_path, capsys):
    import json

    from transformers import AutoModelForQuestionAnswering, BertModel

    pretrained = tmp_path / "pretrained"
    torch.manual_seed(0)
    config = tiny_config(layers=2, hidden=32, heads=4)
    config.max_position_embeddings = 512  # room for SQuAD's 384-token windows
    BertModel(config).save_pretrained(pretrained)
    tiny_tokenizer(str(pretrained)).save_pretrained(pretrained)
    AutoModelForQuestionAnswering.from_pretrained(pretrained).save_pretrained(tmp_path / "qa")
    tiny_tokenizer(str(tmp_path / "qa")).save_pretrained(tmp_path / "qa")
    for version_2 in (False, True):
        task = "squad_v2" if version_2 else "squad"
        dev = write_squad(tmp_path / f"dev{version_2}.json", n=6, v2=version_2, seed=1)
        out = tmp_path / f"pred{version_2}"
        assert main(["evaluate", "--task", task, "--dev-file", dev, "--model", str(tmp_path / "qa"),
                     "--latency-batches", "0", "--n-best", "3", "--max-answer-length", "5",
                     "--predictions-dir", str(out), "--json", str(tmp_path / f"m{version_2}.json")]) == 0
        said = capsys.readouterr()
        assert "max_seq_length 384" in said.err  # SQuAD's reference window when none is given
        preds = json.load(open(out / "predictions.json"))
        nbest = json.load(open(out / "nbest_predictions.json"))
        ids = [q["id"] for a in json.load(open(dev))["data"] for p in a["paragraphs"] for q in p["qas"]]
        assert sorted(preds) == sorted(ids) == sorted(nbest)
        assert all(len(nbest[q]) <= 3 and abs(sum(c["probability"] for c in nbest[q]) - 1) < 1e-6 for q in ids)
        assert (out / "null_odds.json").exists() == version_2
        metrics = json.load(open(tmp_path / f"m{version_2}.json"))["results"][0]
        official = json.load(open(out / "eval.json"))  # as the official script prints it: percent
        # the official scripts' logic (restated in tests/official_squad_eval.py) on the written files
        script = official_squad_eval.main([dev, str(out / "predictions.json")] + (["--v2"] if version_2 else []))
        assert {k: official[k] for k in script} == pytest.approx(script)
        if version_2:
            thresholds = official_squad_eval.main([dev, str(out / "predictions.json"), "--v2", "--na-prob-file",
                                                   str(out / "null_odds.json")])
            assert {k: official[k] for k in thresholds if k.startswith("best")} == pytest.approx(
                {k: v for k, v in thresholds.items() if k.startswith("best")})
        if version_2:
            assert {"exact", "f1", "best_exact", "best_f1", "best_f1_thresh"} <= set(metrics)
            assert official["f1"] == pytest.approx(100 * metrics["f1"]) and official["total"] == metrics["total"]
            assert official["best_f1_thresh"] == pytest.approx(metrics["best_f1_thresh"])
        else:
            assert {"exact_match", "f1"} <= set(metrics)
            assert official == pytest.approx({"exact_match": 100 * metrics["exact_match"], "f1": 100 * metrics["f1"]})


def test_best_threshold_search_is_the_official_one():
    from mlkd_fast.data.squad import squad_metrics

    examples = [{"id": q, "answers": {"text": a, "answer_start": [0] * len(a)}}
                for q, a in (("a", ["cat"]), ("b", []), ("c", ["dog"]), ("d", []))]
    preds = {"a": "cat", "b": "x", "c": "", "d": ""}
    odds = {"a": -2.0, "b": 1.0, "c": 0.5, "d": 3.0}

    def official(scores):  # evaluate-v2.0.py find_best_thresh, restated
        has = {"a": True, "b": False, "c": True, "d": False}
        cur = best = sum(1 for q in has if not has[q])
        thresh = 0.0
        for q in sorted(odds, key=lambda k: odds[k]):
            cur += scores[q] if has[q] else (-1 if preds[q] else 0)
            if cur > best:
                best, thresh = cur, odds[q]
        return best / 4, thresh

    m = squad_metrics(preds, examples, version_2=True, null_odds=odds)
    exact = {"a": 1.0, "b": 0.0, "c": 0.0, "d": 1.0}
    assert (m["best_exact"], m["best_exact_thresh"]) == pytest.approx(official(exact))
    assert m["exact"] == pytest.approx(0.5) and m["best_exact"] == pytest.approx(0.75)


def test_one_squad_file_split_by_article(tmp_path, capsys):
    from mlkd_fast.data.squad import read_squad_json, split_by_article
    from mlkd_fast.errors import InputError

    one = json.loads(open(write_squad(tmp_path / "one.json", n=15)).read())["data"][0]["paragraphs"]
    articles = [{"title": f"a{k}", "paragraphs": [p]} for k, p in enumerate(one)]  # 5 articles, 3 questions each
    path = tmp_path / "five.json"
    path.write_text(json.dumps({"version": "1.1", "data": articles}))
    examples = read_squad_json(str(path))
    train, held = split_by_article(examples, 2, seed=7)
    assert len(held) == 6 and len(train) == 9 and not set(train["article"]) & set(held["article"])
    again = split_by_article(examples, 2, seed=7)[1]
    assert again["id"] == held["id"]  # the seed fixes the draw
    with pytest.raises(InputError, match=r"held-out articles must be in 1\.\.4"):
        split_by_article(examples, 5, seed=0)
    # the CLI: one file, K held out
    from mlkd_fast.cli import _load_data, build_parser

    args = build_parser().parse_args(["evaluate", "--task", "squad", "--dev-file", str(path), "--model", "m",
                                      "--squad-held-out-articles", "2", "--split-seed", "7"])
    _, dev = _load_data(args, {}, "squad", need_train=False)
    assert dev["id"] == held["id"] and "6 on 2 held-out articles" in capsys.readouterr().err
    # the held-out articles as a SQuAD file, for the official evaluation script
    written = tmp_path / "held.json"
    args = build_parser().parse_args(["evaluate", "--task", "squad", "--dev-file", str(path), "--model", "m",
                                      "--squad-held-out-articles", "2", "--split-seed", "7",
                                      "--squad-held-out-file", str(written)])
    _load_data(args, {}, "squad", need_train=False)
    assert sorted(read_squad_json(str(written))["id"]) == sorted(held["id"])
    assert json.loads(written.read_text())["version"] == "1.1"
    args = build_parser().parse_args(["evaluate", "--task", "squad", "--dev-file", str(path), "--model", "m",
                                      "--squad-held-out-file", str(written)])
    with pytest.raises(InputError, match="give both"):
        _load_data(args, {}, "squad", need_train=False)
