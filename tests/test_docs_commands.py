"""The commands the README and docs/ show stay true: every `mlkd-fast ...` line in a fenced shell block parses
with the CLI's own parser (optional parts in [brackets] dropped, `...` standing for the arguments shown before),
and every flag of a `python benchmarks/....py` line is one that script's --help lists."""
import functools
import os
import re
import shlex
import subprocess
import sys

import pytest

from mlkd_fast.cli import build_parser

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
DOCS = ["README.md", "benchmarks/README.md"] + [os.path.join("docs", f) for f in sorted(os.listdir(os.path.join(REPO, "docs")))
                                               if f.endswith(".md")]


def _commands(prefixes):
    """(file, command line) for each shell line in a fenced block starting with one of `prefixes`."""
    found = []
    for doc in DOCS:
        for block in _shell_blocks(open(os.path.join(REPO, doc), encoding="utf-8").read()):
            for line in block.replace("\\\n", " ").splitlines():
                line = line.split(" #", 1)[0].strip()
                if any(line.startswith(p) for p in prefixes):
                    found.append((doc, line))
    return found


def _shell_blocks(text: str):
    """The bodies of the fenced blocks whose language is bash, sh or none, fences paired line by line."""
    blocks, body, language = [], None, None
    for line in text.splitlines():
        if line.startswith("```"):
            if body is None:
                body, language = [], line[3:].strip()
            else:
                if language in ("", "bash", "sh"):
                    blocks.append("\n".join(body))
                body = None
        elif body is not None:
            body.append(line)
    return blocks


def _cli_argv(line: str):
    line = re.sub(r"\[[^\]]*\]", " ", line)  # optional parts
    tokens = shlex.split(line)
    tokens = tokens[tokens.index("mlkd_fast") + 1:] if "mlkd_fast" in tokens else tokens[1:]
    return [t for t in tokens if t != "..."]


CLI_LINES = _commands(("mlkd-fast ", "torchrun ", "accelerate launch "))
SCRIPT_LINES = _commands(("python benchmarks/",))


def test_the_docs_show_commands():
    assert len(CLI_LINES) >= 8 and len(SCRIPT_LINES) >= 4


@pytest.mark.parametrize("doc,line", CLI_LINES, ids=[f"{d}:{i}" for i, (d, _) in enumerate(CLI_LINES)])
def test_cli_lines_parse(doc, line):
    argv = _cli_argv(line)
    required = {"finetune": ["--output-dir", "o"], "distill": ["--teacher", "t", "--output-dir", "o"],
                "general-distill": ["--corpus", "c", "--output-dir", "o"], "evaluate": ["--model", "m"]}
    given = set(argv)
    extra = [x for flag, value in zip(required.get(argv[0], [])[::2], required.get(argv[0], [])[1::2])
             if flag not in given for x in (flag, value)]
    try:
        build_parser().parse_args(argv + extra)
    except SystemExit as e:
        pytest.fail(f"{doc}: `{line}` does not parse (exit {e.code})")


@functools.lru_cache(maxsize=None)
def _script_help(script: str) -> str:
    out = subprocess.run([sys.executable, script, "--help"], cwd=REPO, capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-2000:]
    return out.stdout


@pytest.mark.parametrize("doc,line", SCRIPT_LINES, ids=[f"{d}:{i}" for i, (d, _) in enumerate(SCRIPT_LINES)])
def test_benchmark_lines_use_flags_the_scripts_have(doc, line):
    tokens = shlex.split(re.sub(r"\[[^\]]*\]", " ", line))
    script = tokens[1]
    assert os.path.isfile(os.path.join(REPO, script)), f"{doc}: {script} does not exist"
    flags = [t.split("=", 1)[0] for t in tokens[2:] if t.startswith("--")]
    helptext = _script_help(script)
    missing = [f for f in flags if not re.search(re.escape(f) + r"\b", helptext)]
    assert not missing, f"{doc}: `{line}` uses {missing}, which {script} --help does not list"
