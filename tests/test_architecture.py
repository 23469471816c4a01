"""The package's floors, checked by parsing its imports (nothing is imported or run).

ops/ (bottom) <- data/ <- train/ <- cli.py (top): a module imports only its
own floor and the ones below; no import cycles among the package's modules;
no function longer than MAX_FUNCTION_LINES.
"""
from __future__ import annotations

import ast
import os

import pytest

ROOT = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "mlkd_fast")
# floor of each top-level part of the package; a module may import floors <= its own
FLOORS = {"errors": 0, "version": 0, "ops": 0, "kernels": 0, "_C": 0, "data": 1, "train": 2, "cli": 3, "hf": 3, "__main__": 3}
MAX_FUNCTION_LINES = 80


KERNELS = os.path.join(os.path.dirname(ROOT), "kernels")  # installed as mlkd_fast.kernels


def _modules():
    """{dotted module name: path} for every .py file of the package (kernels/ included), plus the extension."""
    found = {"mlkd_fast._C": None}
    for top, prefix in ((ROOT, "mlkd_fast"), (KERNELS, "mlkd_fast.kernels")):
        for folder, _, files in os.walk(top):
            for f in files:
                if f.endswith(".py"):
                    path = os.path.join(folder, f)
                    rel = os.path.relpath(path, top)[:-3].replace(os.sep, ".")
                    name = prefix if rel == "__init__" else f"{prefix}.{rel.removesuffix('.__init__')}"
                    found[name] = path
    found.setdefault("mlkd_fast.kernels", None)  # a namespace package: kernels/ has no __init__.py on purpose
    return found


MODULES = _modules()


def _imports(name: str, path: str):
    """The package modules that `name` imports (anywhere in the file, lazy imports included).

    `from pkg import x` names the submodule pkg.x when it exists, else pkg itself.
    """
    tree = ast.parse(open(path, encoding="utf-8").read(), path)
    package = name if path.endswith("__init__.py") else name.rsplit(".", 1)[0]
    targets = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            targets.update(a.name for a in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                parts = package.split(".")
                base = ".".join(parts[: len(parts) - node.level + 1] + ([base] if base else []))
            for a in node.names:
                sub = f"{base}.{a.name}"
                targets.add(sub if sub in MODULES else base)
    return {t for t in targets if t.split(".")[0] == "mlkd_fast" and t != name}


GRAPH = {name: _imports(name, path) for name, path in MODULES.items() if path}


def _floor(module: str):
    parts = module.split(".")
    return FLOORS.get(parts[1]) if len(parts) > 1 else None  # the package __init__ is the public face, above all


def test_every_part_has_a_floor():
    parts = {m.split(".")[1] for m in MODULES if "." in m}
    assert parts <= set(FLOORS), f"modules outside the known floors: {sorted(parts - set(FLOORS))}"


@pytest.mark.parametrize("module", sorted(m for m in GRAPH if "." in m))
def test_imports_only_same_or_lower_floors(module):
    own = _floor(module)
    upward = sorted(t for t in GRAPH[module] if _floor(t) is None or _floor(t) > own)
    assert not upward, f"{module} (floor {own}) imports {upward} from a higher floor"


def test_ops_never_import_the_trainer_or_data():
    for module, targets in GRAPH.items():
        if module.startswith(("mlkd_fast.ops", "mlkd_fast.kernels")):
            bad = sorted(t for t in targets if not t.startswith(("mlkd_fast.ops", "mlkd_fast.kernels", "mlkd_fast._C", "mlkd_fast.errors")))
            assert not bad, f"{module} imports {bad}"


def test_no_import_cycles():
    state, stack, cycles = {}, [], []

    def visit(m):
        state[m] = "open"
        stack.append(m)
        for t in sorted(GRAPH.get(m, ())):
            if state.get(t) == "open":
                cycles.append(stack[stack.index(t):] + [t])
            elif t in GRAPH and t not in state:
                visit(t)
        stack.pop()
        state[m] = "done"

    for m in sorted(GRAPH):
        if m not in state:
            visit(m)
    assert not cycles, "import cycles: " + "; ".join(" -> ".join(c) for c in cycles)


def test_functions_are_short():
    long = []
    for name, path in MODULES.items():
        if path is None or not path.startswith(ROOT):  # Triton kernels (kernels/) are one kernel per function
            continue
        for node in ast.walk(ast.parse(open(path, encoding="utf-8").read(), path)):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                n = node.end_lineno - node.lineno + 1
                if n > MAX_FUNCTION_LINES:
                    long.append(f"{name}.{node.name}: {n} lines")
    assert not long, f"functions longer than {MAX_FUNCTION_LINES} lines: {long}"


def test_the_checks_see_violations(tmp_path):
    """The parser must notice an upward import and a cycle (a check that cannot fail is no check)."""
    fake = {"mlkd_fast.ops.a": "from mlkd_fast.train import loop\n", "mlkd_fast.train.loop": "import mlkd_fast.ops.a\n"}
    graph = {}
    for name, src in fake.items():
        p = tmp_path / (name.replace(".", "_") + ".py")
        p.write_text(src)
        MODULES.setdefault(name, str(p))
        graph[name] = _imports(name, str(p))
    try:
        assert graph["mlkd_fast.ops.a"] == {"mlkd_fast.train.loop"}
        assert _floor("mlkd_fast.train.loop") > _floor("mlkd_fast.ops.a")
        assert graph["mlkd_fast.train.loop"] == {"mlkd_fast.ops.a"}
    finally:
        for name in fake:
            if (MODULES.get(name) or "").startswith(str(tmp_path)):
                del MODULES[name]


def test_every_cited_doc_is_in_the_repository():
    """Comments cite docs/<name>.md; each must exist (the project's own docs, not outside input)."""
    import re

    repo = os.path.dirname(ROOT)
    missing = set()
    for top in ("mlkd_fast", "kernels", "csrc", "benchmarks", "tests", "configs"):
        for folder, _, files in os.walk(os.path.join(repo, top)):
            for f in files:
                if f.endswith((".py", ".h", ".cpp", ".inc", ".yaml", ".sh")):
                    text = open(os.path.join(folder, f), encoding="utf-8").read()
                    missing.update(d for d in re.findall(r"docs/[\w-]+\.md", text) if not os.path.isfile(os.path.join(repo, d)))
                    outside = [n for n in ("METHOD", "KERNELS", "ENVIRONMENT") if f"{n}.md" in text]
                    assert f == "test_architecture.py" or not outside, f"{f} cites {outside}: documents outside the repository"
    assert not missing, f"cited but missing: {sorted(missing)}"
