"""scripts/get_glue.py: a hub dataset written as a GLUE folder reads back (--data-dir) as the same examples,
labels mapped through the hub's label order; a local `datasets` object stands in for the hub."""
import os
import subprocess
import sys

import datasets
import pytest

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
sys.path.insert(0, os.path.join(REPO, "scripts"))
import get_glue  # noqa: E402

from mlkd_fast.data import load_glue_split  # noqa: E402
from mlkd_fast.data.glue import normalize_columns  # noqa: E402
from mlkd_fast.data.tasks import get_task  # noqa: E402

HUB = {  # task -> (hub columns, hub label names in the hub's id order, rows)
    "mrpc": (("sentence1", "sentence2"), ["not_equivalent", "equivalent"],
             [("He said \"yes\".", "He agreed.", 1), ("A cat.", "A dog.", 0), ("x", "y", 1)]),
    "mnli": (("premise", "hypothesis"), ["entailment", "neutral", "contradiction"],
             [("It rains.", "It is wet.", 0), ("It rains.", "It is dry.", 2), ("A man.", "A tall man.", 1)]),
    "cola": (("sentence",), ["unacceptable", "acceptable"], [("The cat sat.", 1), ("Cat the sat.", 0)]),
    "sts-b": (("sentence1", "sentence2"), None, [("A dog runs.", "A dog is running.", 4.75), ("a", "b", 0.0)]),
}


def stand_in(task, source, split):
    """What the library's hub reader returns for the hub's version of the task (labels in the task's order)."""
    cols, names, rows = HUB[task]
    features = {c: datasets.Value("string") for c in cols}
    features["label"] = datasets.Value("float32") if names is None else datasets.ClassLabel(names=names)
    ds = datasets.Dataset.from_dict({**{c: [r[i] for r in rows] for i, c in enumerate(cols)},
                                     "label": [r[-1] for r in rows]}, features=datasets.Features(features))
    return normalize_columns(get_task(task), ds, "nyu-mll/glue")  # not a local path: the hub's label order


@pytest.mark.parametrize("task", sorted(HUB))
def test_written_folder_reads_back_the_same_examples(tmp_path, task):
    paths = get_glue.write_task(task, str(tmp_path), load=stand_in)
    assert [os.path.basename(p) for p in paths] == ["train.tsv", get_task(task).dev_split + ".tsv"]
    expected = stand_in(task, None, "train").to_dict()
    for split in ("train", "dev"):
        got = load_glue_split(task, str(tmp_path), split).to_dict()
        assert got.keys() == expected.keys()
        for key in expected:
            if task == "sts-b" and key == "labels":
                assert got[key] == pytest.approx(expected[key])
            else:
                assert got[key] == expected[key], key
    if task == "mnli":  # hub ids 0/1/2 = entailment/neutral/contradiction, written as the words
        assert open(tmp_path / "MNLI" / "train.tsv").read().split("\n")[1].endswith("\tentailment")


def test_offline_hub_is_one_clear_line(tmp_path):
    env = dict(os.environ, HF_HUB_OFFLINE="1", HF_DATASETS_OFFLINE="1")
    out = subprocess.run([sys.executable, os.path.join(REPO, "scripts", "get_glue.py"), "--out", str(tmp_path),
                          "--source", "no-such-org/no-such-glue"], capture_output=True, text=True, env=env)
    assert out.returncode == 2
    last = out.stderr.strip().splitlines()[-1]
    assert last.startswith("get_glue: error: ") and "no-such-org/no-such-glue" in last and "Traceback" not in out.stderr
    assert not (tmp_path / "MRPC").exists()  # nothing half-fetched
