"""One TSV reader for every entry point: a file given as --train-file/--dev-file (load_datasets_split) is read
exactly as --data-dir reads it (quotes are data, BOM, CRLF, the task's own columns and labels), a headed TSV of
other column names is read without quote processing too, and a bad line is named by file and line."""
import os

import pytest

from mlkd_fast.data import load_datasets_split, load_glue_split
from mlkd_fast.errors import InputError

GLUE = os.path.join(os.path.dirname(__file__), "..", "..", "..", "shared", "data", "glue")
QUOTED_MRPC = [
    "\ufeffQuality\t#1 ID\t#2 ID\t#1 String\t#2 String",
    '1\t1\t2\t"Hello," she said.\tShe said "hello"',
    '0\t3\t4\tA 12" pipe\tnothing quoted',
    '1\t5\t6\t"\tan empty-looking "',
    '0\t7\t8\ttwo "quotes" "here\tend',
]


def _write(path, lines, newline="\n"):
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with open(path, "w", encoding="utf-8", newline="") as f:
        f.write(newline.join(lines) + newline)
    return str(path)


@pytest.mark.parametrize("newline", ["\n", "\r\n"])
def test_quoted_glue_file_reads_the_same_by_every_path(tmp_path, newline):
    glue = tmp_path / "glue"
    path = _write(glue / "MRPC" / "train.tsv", QUOTED_MRPC, newline)
    by_dir, by_file = load_glue_split("mrpc", str(glue), "train"), load_datasets_split("mrpc", path, "train")
    assert by_dir.to_dict() == by_file.to_dict()
    assert by_file["sentence1"] == ['"Hello," she said.', 'A 12" pipe', '"', 'two "quotes" "here']
    assert by_file["sentence2"][0] == 'She said "hello"' and by_file["labels"] == [1, 0, 1, 0]


def test_headed_tsv_with_hub_column_names(tmp_path):
    path = _write(tmp_path / "rte.tsv", ["sentence1\tsentence2\tlabel", 'He said "yes\tHe agreed\tentailment',
                                         'x\t"y"\tnot_entailment'])
    ds = load_datasets_split("rte", path, "train")
    assert ds["sentence1"] == ['He said "yes', "x"] and ds["sentence2"] == ["He agreed", '"y"']
    assert ds["labels"] == [0, 1]
    numeric = _write(tmp_path / "sst.tsv", ["sentence\tlabel", 'a "quoted" film\t1', "bad\t0"])
    assert load_datasets_split("sst-2", numeric, "dev")["labels"] == [1, 0]


def test_bad_lines_are_named(tmp_path):
    short = _write(tmp_path / "g" / "MRPC" / "dev.tsv", QUOTED_MRPC[:2] + ["1\t2\tonly three"])
    with pytest.raises(InputError, match=r"dev\.tsv, line 3: expected 5 tab-separated fields, got 3"):
        load_datasets_split("mrpc", short, "dev")
    other = _write(tmp_path / "o.tsv", ["sentence1\tsentence2\tlabel", "a\tb\tentailment\textra"])
    with pytest.raises(InputError, match=r"o\.tsv, line 2: expected 3 tab-separated fields"):
        load_datasets_split("rte", other, "dev")
    unknown = _write(tmp_path / "u.tsv", ["sentence1\tsentence2\tlabel", "a\tb\tmaybe"])
    with pytest.raises(InputError, match=r"label 'maybe' is not one of"):
        load_datasets_split("rte", unknown, "dev")


@pytest.mark.skipif(not os.path.isdir(GLUE), reason="the real GLUE files (../shared/data/glue) are not here")
@pytest.mark.parametrize("task,folder", [("mrpc", "MRPC"), ("rte", "RTE"), ("sts-b", "STS-B"), ("cola", "CoLA")])
def test_real_glue_files_read_the_same_by_every_path(task, folder):
    for split in ("train", "dev"):
        by_dir = load_glue_split(task, GLUE, split)
        by_file = load_datasets_split(task, os.path.join(GLUE, folder, f"{split}.tsv"), split)
        assert by_dir.to_dict() == by_file.to_dict(), (task, split)
