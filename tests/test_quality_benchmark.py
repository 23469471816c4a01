"""The quality benchmark: one row end to end on tiny models (teacher cached, rows never rerun), and the table
built from a CSV whose means, spreads and retention are checked by hand."""
import csv
import os
import subprocess
import sys

import pytest
from tiny_bert import WORDS, tiny_config, tiny_tokenizer, write_mrpc

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
RUN = os.path.join(REPO, "benchmarks", "quality", "run.py")
TABLE = os.path.join(REPO, "benchmarks", "quality", "table.py")


def _run(*args, check=True):
    env = dict(os.environ, HF_HUB_OFFLINE="1", TRANSFORMERS_VERBOSITY="error", OMP_NUM_THREADS="1")
    out = subprocess.run([sys.executable, *args], capture_output=True, text=True, env=env, timeout=600)
    if check:
        assert out.returncode == 0, out.stdout[-2000:] + out.stderr[-4000:]
    return out


def test_one_row_end_to_end_on_tiny_models(tmp_path):
    from transformers import BertModel

    pretrained = tmp_path / "pretrained"
    BertModel(tiny_config(layers=6, hidden=32, heads=4)).save_pretrained(pretrained)
    tiny_tokenizer(str(pretrained)).save_pretrained(pretrained)
    glue = write_mrpc(str(tmp_path / "glue"), n_train=24, n_dev=8)
    results = tmp_path / "quality.csv"
    common = ["--task", "mrpc", "--glue-dir", glue, "--teacher-model", str(pretrained), "--runs-dir",
              str(tmp_path / "runs"), "--results", str(results), "--heads", "2", "--set", "splits=4"]
    _run(RUN, "--objective", "kd", "--variant", "kd", *common)
    teacher_files = os.listdir(tmp_path / "runs" / "teachers" / "mrpc")
    assert "dev_metrics.json" in teacher_files
    _run(RUN, "--objective", "mlkd", "--variant", "mlkd", *common)
    rows = list(csv.DictReader(open(results)))
    assert [(r["variant"], r["objective"], r["heads"]) for r in rows] == [("kd", "kd", "2"), ("mlkd", "mlkd", "2")]
    kd, mlkd = rows
    # equal budgets in optimiser steps: 3 epochs of 24 rows in batches of 32
    assert kd["steps"] == mlkd["steps"] == "3" and (kd["stage1_epochs"], mlkd["stage1_epochs"]) == ("0", "1")
    assert 0 <= float(mlkd["dev_f1"]) <= 1 and mlkd["teacher_f1"] == kd["teacher_f1"] and mlkd["commit"]
    assert (mlkd["teacher"], mlkd["student"]) == ("6L-32", "3L-32")  # the shapes of this row's models
    # both rows read the teacher's features from one cache under the runs folder (one per feature set)
    assert kd["teacher_cache"] == mlkd["teacher_cache"] == "yes"
    assert len(os.listdir(tmp_path / "runs" / "cache")) == 2
    again = _run(RUN, "--objective", "mlkd", "--variant", "mlkd", *common)
    assert "not rerun" in again.stdout and len(list(csv.DictReader(open(results)))) == 2
    bad = _run(RUN, "--objective", "mlkd", "--task", "mrpc", "--set", "splits=4", check=False)
    assert bad.returncode != 0 and "--variant" in bad.stderr


def _squad_articles(path, articles=12, seed=0):
    """A SQuAD v1.1 file of `articles` one-paragraph articles, 3 questions each, answers inside the context."""
    import json

    import numpy as np

    rng = np.random.default_rng(seed)
    data = []
    for a in range(articles):
        words = [str(w) for w in rng.choice(WORDS, size=16)]
        qas = []
        for q in range(3):
            i = int(rng.integers(0, 14))
            qas.append({"id": f"a{a}q{q}", "question": " ".join(rng.choice(WORDS, size=3)),
                        "answers": [{"text": " ".join(words[i:i + 2]), "answer_start": len(" ".join(words[:i])) + (i > 0)}]})
        data.append({"title": f"article {a}", "paragraphs": [{"context": " ".join(words), "qas": qas}]})
    path.write_text(json.dumps({"version": "1.1", "data": data}))
    return str(path)


def test_a_squad_row_on_one_file_split_by_article(tmp_path):
    """--task squad: grid.yaml's article split of one file (5 held out), teacher and student trained on the rest,
    the row's EM/F1 those of the official v1.1 script on the written held-out file and predictions.json."""
    import json

    import official_squad_eval
    from transformers import BertModel

    pretrained = tmp_path / "pretrained"
    config = tiny_config(layers=6, hidden=32, heads=4)
    config.max_position_embeddings = 512  # room for grid.yaml's 256-token SQuAD windows
    BertModel(config).save_pretrained(pretrained)
    tiny_tokenizer(str(pretrained)).save_pretrained(pretrained)
    squad = _squad_articles(tmp_path / "squad.json")
    results, runs = tmp_path / "quality.csv", tmp_path / "runs"
    _run(RUN, "--task", "squad", "--objective", "kd", "--squad-file", squad, "--teacher-model", str(pretrained),
         "--runs-dir", str(runs), "--results", str(results), "--heads", "4")
    (row,) = list(csv.DictReader(open(results)))
    assert (row["task"], row["metric"], row["split"]) == ("squad", "f1", "squad.json: 5 held-out articles, split seed 0; 1500 training questions drawn by the seed")
    held = json.load(open(runs / "squad" / "held_out.json"))["data"]
    assert len(held) == 5 and row["precision"] == "bf16" and row["teacher_cache"] == "no"
    predictions = runs / "squad" / "kd_h4_s42" / "eval" / "predictions.json"
    assert sorted(json.load(open(predictions))) == sorted(q["id"] for a in held for p in a["paragraphs"] for q in p["qas"])
    official = official_squad_eval.main([str(runs / "squad" / "held_out.json"), str(predictions)])
    assert abs(official["f1"] - 100 * float(row["dev_f1"])) < 1e-2
    assert abs(official["exact_match"] - 100 * float(row["dev_exact_match"])) < 1e-2
    assert row["teacher_f1"] and row["teacher_exact_match"] and row["learning_rate"] == "0.0001"


def _row(task, variant, seed, main, value, teacher, objective=None, **kw):
    row = dict(task=task, variant=variant, objective=objective or variant, heads="12", seed=str(seed), epochs="3",
               metric=main, student="3L-384",
               stage1_epochs="1", stage2_epochs="2", steps="345", params="17390594", latency_ms="100",
               wall_s="600", cpu_model="cpu", commit="abc")
    row.update({f"dev_{main}": str(value), f"teacher_{main}": str(teacher)}, **kw)
    return row


def test_table_means_spreads_and_retention(tmp_path):
    rows = [_row("cola", "mlkd-no-ss", 1, "mcc", 0.35, 0.40, objective="mlkd"),
            _row("cola", "mlkd", 1, "mcc", 0.36, 0.40),
            _row("cola", "ft", 1, "mcc", 0.30, 0.40), _row("cola", "ft", 2, "mcc", 0.34, 0.40)]
    path = tmp_path / "quality_cpu-2core.csv"
    with open(path, "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=list(rows[0]))
        w.writeheader()
        w.writerows(rows)
    readme = tmp_path / "README.md"
    readme.write_text("before\n<!-- quality-table:start -->\nold\n<!-- quality-table:end -->\nafter\n")
    _run(TABLE, "--dir", str(tmp_path), "--readme", str(readme))
    text = readme.read_text()
    assert text.startswith("before\n") and text.endswith("after\n") and "old" not in text
    assert "**CoLA** (dev set)" in text  # the GLUE spelling of the task
    ft = next(line for line in text.splitlines() if line.startswith("| ft |"))
    assert "| 32.00 ± 2.83 |" in ft and "| 80.0 |" in ft and "| 2 |" in ft  # mean, sample std, 32 / 40
    mlkd = next(line for line in text.splitlines() if line.startswith("| mlkd |"))
    assert "| 36.00 |" in mlkd and "| 90.0 |" in mlkd
    # plain objectives first, the simple ones before the method, then the variants of them
    lines = [line.split(" | ")[0] for line in text.splitlines() if line.startswith("| ") and "---" not in line]
    assert lines == ["| variant", "| ft", "| mlkd", "| mlkd-no-ss"]
    assert (tmp_path / "quality_cpu-2core.png").stat().st_size > 0


@pytest.mark.parametrize("precision", ["fp32", "bf16"])
def test_best_lr_table_picks_each_objectives_lr_and_says_beats_only_beyond_the_spread(precision, monkeypatch):
    sys.path.insert(0, os.path.join(REPO, "benchmarks"))
    sys.path.insert(0, os.path.dirname(TABLE))
    import table

    monkeypatch.setitem(table.GRID_PRECISION, "cola", precision)  # the grid's precision is the task's (grid.yaml)

    def row(objective, lr, seed, value, precision=precision):
        if precision == "bf16":
            variant, over = f"{objective}-lr{lr}+bf16", f"learning_rate={lr} precision=bf16"
        else:
            variant, over = (objective, "") if lr == "5e-5" else (f"{objective}-lr{lr}", f"learning_rate={lr}")
        return _row("cola", variant, seed, "mcc", value, 0.4, objective=objective, overrides=over, precision=precision)

    rows = [row("ft", "5e-5", 42, 0.20), row("ft", "1e-4", 42, 0.25), row("ft", "2e-4", 42, 0.22),
            row("ft", "1e-4", 43, 0.24), row("ft", "1e-4", 44, 0.26),
            row("kd", "5e-5", 42, 0.20), row("kd", "1e-4", 42, 0.21), row("kd", "2e-4", 42, 0.22),
            row("kd", "4e-4", 42, 0.22), row("kd", "2e-4", 43, 0.21), row("kd", "2e-4", 44, 0.23),
            row("mlkd", "5e-5", 42, 0.30), row("mlkd", "1e-4", 42, 0.31), row("mlkd", "2e-4", 42, 0.29),
            row("mlkd", "1e-4", 43, 0.25), row("mlkd", "1e-4", 44, 0.27),
            _row("cola", "mlkd-lr1.5e-4", 42, "mcc", 0.50, 0.4, objective="mlkd", overrides="learning_rate=1.5e-4"),
            # a row in the other precision is out of this task's grid however well it scored
            row("ft", "2e-4", 42, 0.90, precision={"fp32": "bf16", "bf16": "fp32"}[precision])]
    lines = {line["objective"]: line for line in table.best_lr_table(rows, "cola")}
    assert lines["ft"]["best lr"] == "1e-4" and lines["kd"]["best lr"] == "2e-4"  # tie 2e-4 / 4e-4: the first
    assert lines["mlkd"]["best lr"] == "1e-4"  # the off-grid 1.5e-4 row stays out of the grid
    # mlkd - ft by seed: 6, 1, 1 -> mean 2.67 < larger std (mlkd 3.06): level; mlkd - kd: 10, 4, 4 -> 6 > 3.06
    assert lines["ft"]["verdict"].startswith("level") and lines["kd"]["verdict"] == "mlkd beats kd"
    assert lines["mlkd"]["mcc"] == "27.67 ± 3.06"


def test_heads_starts_and_budget_tables_pair_seeds_at_each_objectives_best_lr():
    sys.path.insert(0, os.path.join(REPO, "benchmarks", "quality"))
    import table

    def row(objective, lr, seed, value, heads=12, start="concat", epochs=3, precision="fp32"):
        suffix = "".join(f"+{s}" for s in (start if start != "concat" else None,
                                            "bf16" if precision == "bf16" else None) if s)
        over = f"learning_rate={lr}" + (" precision=bf16" if precision == "bf16" else "")
        variant = objective if lr == "5e-5" and not suffix else f"{objective}-lr{lr}{suffix}"
        return _row("mrpc", variant, seed, "accuracy", value, 0.8, objective=objective, heads=str(heads),
                    head_init=start, precision=precision, epochs=str(epochs), dev_f1="0.8", teacher_f1="0.9",
                    overrides="" if variant == objective else over,
                    stage1_epochs="1" if objective == "mlkd" else "0", stage2_epochs=str(epochs - (objective == "mlkd")))

    rows = [row("kd", "5e-5", 42, 0.70), row("kd", "2e-4", 42, 0.72), row("kd", "2e-4", 43, 0.74),
            row("mlkd", "5e-5", 42, 0.75), row("mlkd", "2e-4", 42, 0.78), row("mlkd", "2e-4", 43, 0.80),
            row("mlkd", "2e-4", 42, 0.70, heads=4), row("mlkd", "2e-4", 43, 0.71, heads=4),
            row("mlkd", "2e-4", 42, 0.72, heads=4, start="grouped"), row("mlkd", "2e-4", 43, 0.75, heads=4, start="grouped"),
            row("kd", "2e-4", 42, 0.69, heads=4, start="grouped"), row("kd", "2e-4", 43, 0.70, heads=4, start="grouped"),
            row("mlkd", "5e-5", 42, 0.60, heads=4, start="grouped"),  # another lr: in no table below
            row("mlkd", "2e-4", 42, 0.81, epochs=15, precision="bf16"),
            row("mlkd", "2e-4", 42, 0.79, precision="bf16"),
            row("mlkd", "2e-4", 43, 0.83, epochs=15, precision="bf16"),
            row("mlkd", "2e-4", 42, 0.78, heads=4, start="grouped", epochs=15, precision="bf16"),
            row("mlkd", "2e-4", 43, 0.79, heads=4, start="grouped", epochs=15, precision="bf16"),
            row("kd", "2e-4", 42, 0.70, heads=4, start="grouped", epochs=15, precision="bf16"),
            # another lr of the grid at the longer budget only: a line of its own, compared with MLKD at its best
            row("kd", "1e-4", 42, 0.74, heads=4, start="grouped", epochs=15, precision="bf16"),
            row("kd", "1e-4", 43, 0.75, heads=4, start="grouped", epochs=15, precision="bf16")]
    starts = {line["start"]: line for line in table.starts_table(rows, "mrpc")}
    assert starts["concat"]["accuracy"] == "70.50 ± 0.71 (n=2)" and starts["grouped"]["accuracy"] == "73.50 ± 2.12 (n=2)"
    assert starts["grouped"]["12 heads - it (accuracy, paired)"] == "5.50 ± 0.71 (n=2)"  # 78-72, 80-75
    heads = {line["heads"]: line for line in table.heads_table(rows, "mrpc", {12: 30.0, 4: 20.0})}
    assert set(heads) == {"12", "4"} and heads["4"]["ms / batch of 32"] == "20.0"
    assert heads["4"]["mlkd accuracy"] == "73.50 ± 2.12 (n=2)" and heads["4"]["kd accuracy"] == "69.50 ± 0.71 (n=2)"
    assert heads["4"]["mlkd - kd (accuracy, paired)"] == "4.00 ± 1.41 (n=2)"  # 72-69, 75-70
    assert heads["12"]["mlkd - kd (accuracy, paired)"] == "6.00 ± 0.00 (n=2)"
    cells = table.budget_cells(rows, "mrpc")
    budget = table.budget_table(cells, "accuracy")
    assert [(line["objective"], line["heads"], line["start"], line["lr"]) for line in budget] == [
        ("mlkd", "12", "", "2e-4"), ("mlkd", "4", "grouped", "2e-4"), ("kd", "4", "grouped", "2e-4"),
        ("kd", "4", "grouped", "1e-4")]
    assert budget[3]["15 epochs, bf16"] == "74.50 ± 0.71 (n=2) [0 + 15]" and budget[3]["3 epochs, fp32"] == ""
    assert budget[0]["3 epochs, fp32"].startswith("79.00 ± 1.41 (n=2)")
    assert budget[0]["3 epochs, bf16"] == "79.00 (n=1) [1 + 2]" and budget[0]["15 epochs, bf16"] == "82.00 ± 1.41 (n=2) [1 + 14]"
    assert budget[1]["3 epochs, fp32"] == "73.50 ± 2.12 (n=2) [1 + 2]" and budget[1]["3 epochs, bf16"] == ""
    gaps = {(line["comparison"], line["budget"]): line for line in table.budget_gaps_table(cells, "accuracy", {"mlkd": 2e-4, "kd": 2e-4})}
    assert set(gaps) == {(pair, budget) for budget in ("3 epochs, fp32", "15 epochs, bf16")  # no tinybert rows
                         for pair in ("mlkd 12h lr 2e-4 - mlkd 4h grouped lr 2e-4",
                                      "mlkd 4h grouped lr 2e-4 - kd 4h grouped lr 2e-4")} | {
        ("mlkd 4h grouped lr 2e-4 - kd 4h grouped lr 1e-4", "15 epochs, bf16")}
    other = gaps[("mlkd 4h grouped lr 2e-4 - kd 4h grouped lr 1e-4", "15 epochs, bf16")]  # 78-74, 79-75
    assert other["paired gap (accuracy)"] == "4.00 ± 0.00 (n=2)" and other["verdict"].endswith("beats kd 4h grouped lr 1e-4")
    longer = gaps[("mlkd 12h lr 2e-4 - mlkd 4h grouped lr 2e-4", "15 epochs, bf16")]  # 81-78, 83-79: 3.5 > larger std 1.41
    assert longer["paired gap (accuracy)"] == "3.50 ± 0.71 (n=2)" and longer["verdict"] == "mlkd 12h lr 2e-4 beats mlkd 4h grouped lr 2e-4"
    assert gaps[("mlkd 4h grouped lr 2e-4 - kd 4h grouped lr 2e-4", "3 epochs, fp32")]["paired gap (accuracy)"] == "4.00 ± 1.41 (n=2)"
    assert gaps[("mlkd 4h grouped lr 2e-4 - kd 4h grouped lr 2e-4", "15 epochs, bf16")]["verdict"] == "one seed: no verdict"  # 78-70
    assert table.verdict("a", "b", {1: 1.0, 2: 2.0}, {1: 5.0, 2: 6.0}) == "b beats a"
    assert table.verdict("a", "b", {1: 1.0, 2: 3.0}, {1: 2.0, 2: 3.0}).startswith("level")
    assert table.verdict("a", "b", {1: 1.0}, {1: 5.0}) == "one seed: no verdict"
    assert all(table._lr_of(r) is None for r in rows if r["precision"] == "bf16" or r["heads"] != "12")


def test_squad_block_teacher_and_students(tmp_path):
    split = "dev-v1.1.json: 10 held-out articles, split seed 0"
    rows = [_row("squad", o, 42, "f1", f1, 0.60, objective=o, dev_exact_match=str(em), teacher_exact_match="0.50",
                 split=split, precision="bf16", learning_rate="0.0001")
            for o, f1, em in (("ft", 0.40, 0.30), ("mlkd", 0.45, 0.35))]
    rows.append(_row("mrpc", "ft", 42, "accuracy", 0.7, 0.8, dev_f1="0.8", teacher_f1="0.85"))
    path = tmp_path / "quality_cpu-2core.csv"
    with open(path, "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=list(dict.fromkeys(k for r in rows for k in r)), restval="")
        w.writeheader()
        w.writerows(rows)
    readme = tmp_path / "README.md"
    readme.write_text("<!-- quality-squad:start -->\n<!-- quality-squad:end -->\n"
                      "<!-- quality-verdict:start -->\n<!-- quality-verdict:end -->\n")
    _run(TABLE, "--dir", str(tmp_path), "--readme", str(readme))
    text = readme.read_text()
    squad = text[:text.index("<!-- quality-squad:end")]
    assert "SQuAD v1.1" in squad and split in squad and "bf16, lr 1e-4" in squad and "| F1 | EM |" in squad
    assert "| teacher (6L-384, fine-tuned) |  | 60.00 | 50.00 |" in squad  # rows before the teacher column: the grid's
    sys.path.insert(0, os.path.dirname(TABLE))
    import table

    for r in rows:
        r["teacher"] = "4L-256"
    assert "| teacher (4L-256, fine-tuned) |" in table.squad_markdown(rows)  # else the row's own teacher
    mlkd = next(line for line in squad.splitlines() if line.startswith("| mlkd"))
    assert "| 45.00 | 35.00 | 75.0 |" in mlkd  # F1, EM, retention of the teacher's F1
    assert "mlkd" not in text[text.index("quality-verdict:start"):]  # QA is not in the GLUE lr-grid verdicts


@pytest.mark.parametrize("precision", ["fp32", "bf16"])
def test_protocol_prints_the_grid_then_the_edge_then_the_seeds(precision, monkeypatch):
    sys.path.insert(0, os.path.join(REPO, "benchmarks"))
    sys.path.insert(0, os.path.dirname(TABLE))
    import protocol
    import table

    monkeypatch.setitem(table.GRID_PRECISION, "cola", precision)

    def row(line, value):
        """The row run.py would write for a printed line (variant and overrides as it records them)."""
        args = line.split()
        flag = lambda name: args[args.index(name) + 1] if name in args else None  # noqa: E731
        sets = [args[i + 1] for i, a in enumerate(args) if a == "--set"]
        return _row("cola", flag("--variant") or flag("--objective"), int(flag("--seed")), "mcc", value, 0.4,
                    objective=flag("--objective"), overrides=" ".join(sets), precision=precision)

    assert protocol.needed([], "cola", ["kd"]) == [protocol.row_args("cola", "kd", lr, 42) for lr in (5e-5, 1e-4, 2e-4)]
    for lr in (5e-5, 1e-4, 2e-4):  # every printed line reads back as that lr of the grid
        fam = table.family(row(protocol.row_args("cola", "kd", lr, 42), 0.2))
        assert fam == ("kd", lr, "concat", precision)
    grid = {5e-5: 0.20, 1e-4: 0.21, 2e-4: 0.25}  # best at the edge: 4e-4 next, no seeds yet
    rows = [row(protocol.row_args("cola", "kd", lr, 42), v) for lr, v in grid.items()]
    assert protocol.needed(rows, "cola", ["kd"]) == [protocol.row_args("cola", "kd", 4e-4, 42)]
    rows += [dict(r, objective="mlkd", variant=r["variant"].replace("kd", "mlkd")) for r in rows]
    (kd,) = [line for line in table.best_lr_table(rows, "cola") if line["objective"] == "kd"]
    assert kd["verdict"] == "one seed: no verdict (best at the lr grid's edge: 4e-4 next)"  # the table says so too
    rows = [r for r in rows if r["objective"] == "kd"]
    rows.append(row(protocol.row_args("cola", "kd", 4e-4, 42), 0.24))  # now inside: seeds 43, 44 at 2e-4
    rows.append(row(protocol.row_args("cola", "kd", 2e-4, 43), 0.24))
    assert protocol.needed(rows, "cola", ["kd"]) == [protocol.row_args("cola", "kd", 2e-4, 44)]
    assert "--set precision=bf16" in protocol.row_args("cola", "kd", 2e-4, 44) or precision == "fp32"
    rows.append(row(protocol.row_args("cola", "kd", 2e-4, 44), 0.26))
    assert protocol.needed(rows, "cola", ["kd"]) == []


def test_grid_best_doubles_on_only_while_the_best_is_at_the_top_of_what_ran():
    sys.path.insert(0, os.path.dirname(TABLE))
    import table

    def by_lr(scores):
        return {lr: {42: _row("cola", f"kd-lr{lr}", 42, "mcc", v, 0.4, objective="kd")} for lr, v in scores.items()}

    assert table.grid_best({}, "cola") == (None, None)
    assert table.grid_best(by_lr({5e-5: 0.2, 1e-4: 0.3, 2e-4: 0.1}), "cola") == (1e-4, None)  # inside: no more lrs
    assert table.grid_best(by_lr({5e-5: 0.2, 1e-4: 0.3}), "cola") == (1e-4, 2e-4)  # at the top: the next doubled lr
    assert table.grid_best(by_lr({1e-4: 0.2, 1.5e-4: 0.3}), "cola") == (1.5e-4, 2e-4)  # off the grid: the next one up
    assert table.grid_best(by_lr({4e-4: 0.2, 8e-4: 0.3}), "cola") == (8e-4, None)  # the grid's end: seeds next
    seeds_43 = by_lr({5e-5: 0.2, 1e-4: 0.3})
    seeds_43[2e-4] = {43: _row("cola", "kd-lr2e-4", 43, "mcc", 0.9, 0.4, objective="kd")}
    assert table.grid_best(seeds_43, "cola") == (1e-4, 2e-4)  # only seed 42 chooses the lr
