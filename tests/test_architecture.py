"""The import direction between the project's packages, checked on the source (AST), not on sys.modules.

    hybrid_common  <-  classifiers  <-  router  <-  finetune  <-  evals

Each package may import only the packages listed for it below, and never another package's
``_private`` module or name. ``router`` in particular never imports ``finetune`` or ``evals``:
they plug into it through entry points.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = ("hybrid_common", "classifiers", "router", "finetune", "evals")
ALLOWED: dict[str, frozenset[str]] = {
    "hybrid_common": frozenset(),
    "classifiers": frozenset({"hybrid_common"}),
    "router": frozenset({"hybrid_common", "classifiers"}),
    "finetune": frozenset({"hybrid_common", "classifiers", "router"}),
    "evals": frozenset({"hybrid_common", "classifiers", "router", "finetune"}),
}


def _imported_modules(tree: ast.AST, package_parts: list[str]) -> list[tuple[int, str, list[str]]]:
    """(line, absolute module, imported names) for every import, lazy-export table and import_module call."""
    found: list[tuple[int, str, list[str]]] = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found += [(node.lineno, alias.name, []) for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level:  # relative: resolve against the package holding this module
                base = package_parts[: len(package_parts) - node.level + 1]
                name = ".".join([*base, node.module] if node.module else base)
            else:
                name = node.module or ""
            found.append((node.lineno, name, [alias.name for alias in node.names]))
        elif isinstance(node, ast.Call) and getattr(node.func, "attr", getattr(node.func, "id", None)) == "import_module":
            if node.args and isinstance(node.args[0], ast.Constant) and isinstance(node.args[0].value, str):
                found.append((node.lineno, node.args[0].value, []))
        elif isinstance(node, ast.Assign) and any(getattr(t, "id", None) == "_EXPORTS" for t in node.targets):
            if isinstance(node.value, ast.Dict):  # lazy exports: name -> module imported on first access
                for value in node.value.values:
                    if isinstance(value, ast.Constant) and isinstance(value.value, str):
                        found.append((node.lineno, value.value, []))
    return found


def _private(name: str) -> bool:
    return name.startswith("_") and not (name.startswith("__") and name.endswith("__"))


def violations(source: str, path: str) -> list[str]:
    """Import-direction problems in one module of the project (``path`` relative to the root)."""
    parts = Path(path).with_suffix("").parts
    package_parts = list(parts[:-1])  # the package this module belongs to (itself, for __init__)
    package = parts[0]
    problems = []
    for line, module, names in _imported_modules(ast.parse(source), package_parts):
        parts = module.split(".")
        target = parts[0]
        if target not in PACKAGES or target == package:
            continue
        if target not in ALLOWED[package]:
            problems.append(f"{path}:{line}: {package} imports {module} (may import: {sorted(ALLOWED[package]) or 'nothing of ours'})")
        elif any(_private(p) for p in parts[1:]) or any(_private(n) for n in names):
            problems.append(f"{path}:{line}: {package} imports a private part of {target}: {module} {names or ''}".rstrip())
    return problems


def _sources() -> list[Path]:
    return sorted(p for package in PACKAGES for p in (ROOT / package).rglob("*.py"))


def test_every_package_is_scanned() -> None:
    scanned = {p.relative_to(ROOT).parts[0] for p in _sources()}
    assert scanned == set(PACKAGES)
    assert len(_sources()) > 40


def test_import_direction_holds_in_the_tree() -> None:
    problems = [v for p in _sources() for v in violations(p.read_text(encoding="utf-8"), str(p.relative_to(ROOT)))]
    assert problems == []


@pytest.mark.parametrize(
    ("path", "source", "expected"),
    [
        ("router/x.py", "import finetune.registry", "router imports finetune.registry"),
        ("router/x.py", "def f():\n    from finetune.retrain import retrain", "router imports finetune.retrain"),
        ("router/x.py", "import importlib\nimportlib.import_module('evals.demo')", "router imports evals.demo"),
        ("router/__init__.py", "_EXPORTS = {'retrain': 'finetune.retrain'}", "router imports finetune.retrain"),
        ("hybrid_common/x.py", "from router.errors import RouterError", "hybrid_common imports router.errors"),
        ("classifiers/x.py", "from router.files import sha256_file", "classifiers imports router.files"),
        ("finetune/x.py", "from router._request import GenerationParams", "private part of router"),
        ("finetune/x.py", "from router import _engine", "private part of router"),
        ("evals/x.py", "from classifiers._head import Head", "private part of classifiers"),
        ("finetune/x.py", "from router.policy import _luhn", "private part of router"),
    ],
)
def test_the_checker_catches_each_kind_of_violation(path: str, source: str, expected: str) -> None:
    problems = violations(source, path)
    assert len(problems) == 1 and expected in problems[0]


@pytest.mark.parametrize(
    ("path", "source"),
    [
        ("finetune/x.py", "from router.backends import LlamaCppBackend"),
        ("finetune/x.py", "from .datasets import Example"),
        ("router/_engine.py", "from router._fallback import FallbackRun"),
        ("router/x.py", "from classifiers import EmbeddingClassifier"),
        ("classifiers/x.py", "from hybrid_common.errors import ConfigError"),
        ("router/errors.py", "from hybrid_common.errors import __all__"),
    ],
)
def test_the_checker_allows_the_permitted_direction(path: str, source: str) -> None:
    assert violations(source, path) == []
