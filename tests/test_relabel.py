"""benchmarks/relabel.py: a result file whose rows came from two processors under one label is split into one
file per processor label, rows otherwise unchanged; a file already labelled by its rows is left alone."""
import csv
import os
import sys

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.join(REPO, "benchmarks"))
import relabel  # noqa: E402


def _write(path, rows):
    with open(path, "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=list(rows[0]))
        w.writeheader()
        w.writerows(rows)


def test_mixed_file_is_split_by_processor(tmp_path):
    xeon = {"op": "a", "median_ms": "1.5", "machine": "cpu-2core", "cpu_model": "Intel(R) Xeon(R) Processor",
            "cores": "2", "threads": "2"}
    epyc = dict(xeon, op="b", cpu_model="AMD EPYC")
    one = dict(xeon, op="c", threads="1", machine="cpu-2core-1thread")
    _write(tmp_path / "relation_kl_cpu-2core.csv", [xeon, epyc, one])
    moved = relabel.relabel_file(str(tmp_path / "relation_kl_cpu-2core.csv"))
    assert moved == {"cpu-intel-xeon-2core": 1, "cpu-amd-epyc-2core": 1, "cpu-intel-xeon-2core-1thread": 1}
    assert not (tmp_path / "relation_kl_cpu-2core.csv").exists()
    rows = list(csv.DictReader(open(tmp_path / "relation_kl_cpu-amd-epyc-2core.csv")))
    assert rows == [dict(epyc, machine="cpu-amd-epyc-2core")]
    assert relabel.relabel_file(str(tmp_path / "relation_kl_cpu-amd-epyc-2core.csv")) == {}  # already its label
