"""Write GLUE tasks from the `datasets` hub into a GLUE-format folder (what --data-dir and the main job read).

    python scripts/get_glue.py --out glue                    # MRPC (the main job's task)
    python scripts/get_glue.py --out glue --tasks mrpc rte sts-b cola

Each task's train and dev splits are read through the library's own hub reader (mlkd_fast.data.glue:
load_datasets_split, the hub's label order mapped to the task's) and written as <out>/<FOLDER>/train.tsv and
<dev file>.tsv in the task's GLUE layout (its header names, CoLA without a header), so that `--data-dir <out>`
reads back exactly these examples. Needs network (or a `datasets` cache); files are written whole or not at all.
"""
from __future__ import annotations

import argparse
import os
import sys
from typing import Dict, List

from mlkd_fast.data.tasks import TaskSpec, get_task
from mlkd_fast.errors import InputError
from mlkd_fast.train.atomic import write_bytes


def glue_lines(spec: TaskSpec, columns: Dict[str, list]) -> List[str]:
    """The lines of a GLUE TSV of `spec` holding `columns` (sentence1[, sentence2], labels as class ids)."""
    texts = [columns["sentence1"]] + ([columns["sentence2"]] if "sentence2" in columns else [])
    labels = [str(v) if spec.is_regression else spec.labels[v] for v in columns["labels"]]
    for values in texts:
        if any("\t" in v or "\n" in v or "\r" in v for v in values):
            raise InputError(f"task {spec.name}: a text holds a tab or line break, which a TSV cannot carry")
    if not spec.header:  # CoLA: source, label, original label, sentence (positional)
        width = max(spec.positional) + 1
        lines = []
        for i, label in enumerate(labels):
            row = ["hub"] * width
            row[spec.positional[-1]] = label
            for col, values in zip(spec.positional[:-1], texts):
                row[col] = values[i]
            lines.append("\t".join(row))
        return lines
    header = list(spec.text_columns) + [spec.label_column]
    return ["\t".join(header)] + ["\t".join([t[i] for t in texts] + [label]) for i, label in enumerate(labels)]


def write_task(task: str, out: str, source: str = "nyu-mll/glue", load=None) -> List[str]:
    """Write the task's train and dev TSVs under `out`; `load(task, source, split)` reads a split (default:
    the library's hub reader). Returns the paths written."""
    from mlkd_fast.data.glue import load_datasets_split

    spec = get_task(task)
    if spec.qa:
        raise InputError(f"{task} is not a GLUE task: SQuAD is read from its JSON files (--train-file/--dev-file)")
    load = load or load_datasets_split
    splits = {name: load(spec.name, source, split) for split, name in (("train", "train"), ("dev", spec.dev_split))}
    folder = os.path.join(out, spec.folder)
    os.makedirs(folder, exist_ok=True)
    written = []
    for name, ds in splits.items():
        path = os.path.join(folder, f"{name}.tsv")
        write_bytes(path, ("\n".join(glue_lines(spec, ds.to_dict())) + "\n").encode("utf-8"))
        written.append(path)
    return written


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", required=True, help="the GLUE folder to write (made if missing)")
    p.add_argument("--tasks", nargs="+", default=["mrpc"], help="GLUE tasks (default: mrpc)")
    p.add_argument("--source", default="nyu-mll/glue", help="the datasets hub name (default nyu-mll/glue)")
    args = p.parse_args(argv)
    try:
        for task in args.tasks:
            for path in write_task(task, args.out, args.source):
                print(f"get_glue: wrote {path}")
    except InputError as e:
        print(f"get_glue: error: {e}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
