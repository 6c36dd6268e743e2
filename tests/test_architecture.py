"""ARCHITECTURE.md's layers, enforced: every module is in the table, imports only from its own layer
or below, and no module outside ``zoo/models/`` is part of an import circle; the size rules of task
modules hold (≤ 800 lines, ≤ 10 parameters per function).

Imports are read from the source (``ast``), module-level and inside functions alike: a lazy import
is still a dependency. Imports under ``if TYPE_CHECKING:`` are annotations only and do not count.
"""

from __future__ import annotations

import ast
import fnmatch
import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]

# Bottom up; a module may import from its own layer or a lower one. Must match ARCHITECTURE.md.
LAYERS: list[tuple[str, tuple[str, ...]]] = [
    ("base", ("zoo._version", "zoo._optional", "zoo._files", "zoo.layers", "zoo.layers.*")),
    ("registry", ("zoo._registry",)),
    (
        "architectures",
        ("zoo.models", "zoo.models.*", "zoo.convert", "zoo.convert.*", "zoo.info", "zoo.adapt"),
    ),
    ("contracts", ("zoo.transforms", "zoo.runconfig", "zoo.imageio")),
    ("weights", ("zoo.transfer", "zoo.hub", "zoo.download", "zoo.hub_repo", "zoo.provenance")),
    ("plan", ("zoo.plan", "zoo._factory")),
    (
        "tasks",
        (
            "zoo.predict",
            "zoo.predict_checks",
            "zoo.study",
            "zoo.inference",
            "zoo.export",
            "zoo.export_forms",
            "zoo.onnx_runtime",
            "zoo.bench",
            "zoo.fast",
            "zoo.datalist",
            "zoo.presets",
            "zoo.seg_metrics",
            "zoo.train",
            "zoo.train_state",
            "zoo.run_loggers",
            "zoo.finetune",
            "zoo.finetune_*",
            "zoo.ssl",
            "zoo.ssl.*",
            "zoo.publish",
            "zoo.bundle",
            "zoo.cards",
            "zoo.plots",
        ),
    ),
    ("front ends", ("zoo", "zoo.__main__", "zoo.cli", "zoo.cli.*")),
]
# The registry imports the model package to run its registrations (timm's pattern); models register.
ALLOWED_UPWARD = {("zoo._registry", "zoo.models")}
TASK_MODULES = (
    "zoo.cli",
    "zoo.cli.*",
    "zoo.predict*",
    "zoo.study",
    "zoo.finetune*",
    "zoo.train*",
    "zoo.hub*",
)
TASK_MODULES += ("zoo.export*", "zoo.onnx_runtime", "zoo.publish", "zoo.plan", "zoo.download", "zoo.bench")
TASK_MODULES += ("zoo.datalist", "zoo.ssl.runner", "zoo.runconfig", "zoo._factory", "zoo.bundle")


def _modules() -> dict[str, Path]:
    out = {}
    for path in sorted((ROOT / "zoo").rglob("*.py")):
        parts = path.relative_to(ROOT).with_suffix("").parts
        name = ".".join(parts[:-1] if parts[-1] == "__init__" else parts)
        out[name] = path
    return out


MODULES = _modules()


def _layer(module: str) -> int:
    for rank, (_, patterns) in enumerate(LAYERS):
        if any(fnmatch.fnmatchcase(module, p) for p in patterns):
            return rank
    raise AssertionError(f"{module} is in no layer of tests/test_architecture.py (and ARCHITECTURE.md)")


def _type_checking_nodes(tree: ast.AST) -> set[int]:
    skip: set[int] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test):
            skip.update(id(n) for stmt in node.body for n in ast.walk(stmt))
    return skip


def _imports(module: str, path: Path) -> set[str]:
    tree = ast.parse(path.read_text())
    skip = _type_checking_nodes(tree)
    package = module if path.name == "__init__.py" else module.rpartition(".")[0]
    found: set[str] = set()
    for node in ast.walk(tree):
        if id(node) in skip:
            continue
        if isinstance(node, ast.Import):
            found.update(a.name for a in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                parts = package.split(".")
                parts = parts[: len(parts) - node.level + 1]
                base = ".".join([*parts, *([node.module] if node.module else [])])
            found.add(base)
            found.update(f"{base}.{a.name}" for a in node.names if f"{base}.{a.name}" in MODULES)
    deps = set()
    for name in found:
        while name and name not in MODULES:
            name = name.rpartition(".")[0]
        if name and name != module and name.startswith("zoo"):
            deps.add(name)
    return deps


GRAPH = {m: _imports(m, p) for m, p in MODULES.items()}


def test_every_module_is_in_a_layer():
    for module in MODULES:
        _layer(module)


def test_no_module_imports_from_a_higher_layer():
    upward = [
        f"{m} ({LAYERS[_layer(m)][0]}) imports {d} ({LAYERS[_layer(d)][0]})"
        for m, deps in GRAPH.items()
        for d in sorted(deps)
        if _layer(d) > _layer(m) and (m, d) not in ALLOWED_UPWARD
    ]
    assert upward == []


def _cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on: set[str] = set()
    out: list[list[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on.add(v)
        for w in graph[v]:
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = []
            while True:
                w = stack.pop()
                on.discard(w)
                comp.append(w)
                if w == v:
                    break
            if len(comp) > 1:
                out.append(sorted(comp))

    for v in graph:
        if v not in index:
            visit(v)
    return out


def test_no_import_circle_outside_the_models():
    outside = [c for c in _cycles(GRAPH) if not all(m.startswith("zoo.models") for m in c)]
    assert outside == []


def test_the_cycle_finder_finds_a_circle():
    assert _cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]


def _is_task(module: str) -> bool:
    return any(fnmatch.fnmatchcase(module, p) for p in TASK_MODULES)


@pytest.mark.parametrize("module", sorted(m for m in MODULES if _is_task(m)))
def test_task_modules_stay_small_with_short_signatures(module):
    path = MODULES[module]
    lines = path.read_text().count("\n")
    assert lines <= 800, f"{path.relative_to(ROOT)} has {lines} lines (the rule: at most 800)"
    long = []
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef):
            a = node.args
            names = [x.arg for x in (*a.posonlyargs, *a.args, *a.kwonlyargs)]
            count = len(names) + bool(a.vararg) + bool(a.kwarg) - (names[:1] in (["self"], ["cls"]))
            if count > 10:
                long.append(f"{node.name} ({count})")
    assert long == [], f"{path.relative_to(ROOT)}: functions over 10 parameters: {long}"


def test_architecture_md_names_every_module():
    text = (ROOT / "ARCHITECTURE.md").read_text()
    named = set(re.findall(r"`zoo/([\w/]+)\.py`", text)) | set(re.findall(r"`zoo/([\w/]+)/`", text))
    missing = []
    for module, path in MODULES.items():
        rel = path.relative_to(ROOT / "zoo").with_suffix("").as_posix()
        folders = [rel.rsplit("/", i)[0] for i in range(1, rel.count("/") + 1)]
        if rel.endswith("__init__") or module.startswith("zoo.models.") or module.startswith("zoo.convert."):
            continue
        if rel not in named and not any(f in named for f in folders):
            missing.append(rel)
    assert missing == [], f"ARCHITECTURE.md does not name: {missing}"
