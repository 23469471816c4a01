"""The offline general-distillation corpus: every sentence of the GLUE train and test files, one per line.

    python benchmarks/general/glue_sentences.py [--glue-dir ../shared/data/glue] [--out runs/general/glue_sentences.txt]

Dev files are left out (the quality benchmark scores on them), labels are never read, and nothing is copied
into the repository: the output goes under runs/ (not committed). Duplicate sentences are kept once.
"""
from __future__ import annotations

import argparse
import csv
import glob
import os
import sys

TEXT_COLUMNS = ("sentence", "question", "sentence1", "sentence2", "#1 String", "#2 String")
HEADERLESS = {"CoLA/train.tsv": 3}  # CoLA's train file has no header: the sentence is column 3


def sentences(glue_dir: str):
    csv.field_size_limit(sys.maxsize)
    for path in sorted(glob.glob(os.path.join(glue_dir, "*", "*.tsv"))):
        rel = os.path.relpath(path, glue_dir)
        if os.path.basename(path).startswith("dev"):
            continue
        with open(path, encoding="utf-8-sig", newline="") as f:
            rows = csv.reader(f, delimiter="\t", quoting=csv.QUOTE_NONE)
            if rel in HEADERLESS:
                cols = [HEADERLESS[rel]]
            else:
                header = next(rows)
                cols = [i for i, name in enumerate(header) if name in TEXT_COLUMNS]
            for row in rows:
                for i in cols:
                    if i < len(row) and row[i].strip():
                        yield row[i].strip()


def main(argv=None) -> int:
    here = os.path.dirname(os.path.abspath(__file__))
    repo = os.path.dirname(os.path.dirname(here))
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--glue-dir", default=os.path.join(repo, "..", "shared", "data", "glue"))
    p.add_argument("--out", default=os.path.join(repo, "runs", "general", "glue_sentences.txt"))
    args = p.parse_args(argv)
    os.makedirs(os.path.dirname(os.path.abspath(args.out)), exist_ok=True)
    seen, count = set(), 0
    tmp = args.out + ".tmp"
    with open(tmp, "w", encoding="utf-8") as f:
        for s in sentences(args.glue_dir):
            if s not in seen:
                seen.add(s)
                f.write(s.replace("\n", " ") + "\n")
                count += 1
    os.replace(tmp, args.out)
    print(f"{count} sentences -> {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
