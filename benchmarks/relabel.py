"""Give result rows the machine label of their own processor (hostinfo.cpu_label: model, cores, threads).

    python benchmarks/relabel.py            # every benchmarks/results/*_cpu-*.csv

Rows measured before labels named the processor carry `cpu-2core` whether they ran on an Intel Xeon or an AMD
EPYC. Each file whose name has a CPU label is split by its rows' `cpu_model`, `cores` and `threads` into
<bench>_<label>.csv (appended to one that exists), the `machine` column set to that label and nothing else
changed; the old file is removed once every row is written elsewhere. Plots and tables are made again from the
CSVs (plot.py, quality/table.py). Rows already labelled this way are left where they are.
"""
from __future__ import annotations

import argparse
import glob
import os
import re
import sys
from typing import Dict, List

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import hostinfo  # noqa: E402
import resultfile  # noqa: E402


def label_of(row: Dict[str, str]) -> str:
    """The label a CPU row gets from its own columns (threads: the old label's -Nthread where the row lacks it)."""
    cores = int(row["cores"])
    old = re.search(r"-(\d+)thread$", row.get("machine", ""))
    threads = int(row.get("threads") or (old.group(1) if old else cores))
    return hostinfo.cpu_label(row["cpu_model"], cores, threads)


def relabel_file(path: str) -> Dict[str, int]:
    """Split one result file by its rows' labels; returns label -> rows written."""
    folder, name = os.path.split(path)
    bench, label = re.fullmatch(r"(.+?)_(cpu-.+)\.csv", name).groups()
    groups: Dict[str, List[Dict[str, str]]] = {}
    for row in resultfile.read_csv(path):
        new = label_of(row)
        groups.setdefault(new, []).append(dict(row, machine=new))
    if list(groups) == [label]:
        return {}
    for new, rows in groups.items():
        resultfile.append_csv(os.path.join(folder, f"{bench}_{new}.csv"), rows)
    if label not in groups:
        os.remove(path)
    return {new: len(rows) for new, rows in groups.items()}


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--dir", default=resultfile.RESULTS_DIR)
    p.add_argument("files", nargs="*", help="result CSVs (default: every *_cpu-*.csv in --dir)")
    args = p.parse_args(argv)
    for path in args.files or sorted(glob.glob(os.path.join(args.dir, "*_cpu-*.csv"))):
        moved = relabel_file(path)
        if moved:
            print(f"relabel: {os.path.basename(path)} -> " + ", ".join(f"{k} ({v} rows)" for k, v in moved.items()))
    return 0


if __name__ == "__main__":
    sys.exit(main())
