"""A shared check for packages that export lazily (PEP 562) through ``hybrid_common.lazy``."""

from __future__ import annotations

import ast
import importlib
from pathlib import Path
from types import ModuleType


def _type_checking_names(tree: ast.Module) -> set[str]:
    names: set[str] = set()
    for node in tree.body:
        if isinstance(node, ast.If) and getattr(node.test, "id", None) == "TYPE_CHECKING":
            for sub in ast.walk(node):
                if isinstance(sub, ast.ImportFrom):
                    names.update(alias.asname or alias.name for alias in sub.names)
    return names


def check_lazy_exports(package: ModuleType, extra: set[str] = frozenset()) -> None:
    """``__all__`` is the export table; each name resolves to the object its mapped module defines and
    lists; static analysers see the same names (``if TYPE_CHECKING`` imports)."""
    exports: dict[str, str] = package._EXPORTS
    assert set(package.__all__) == set(exports) | set(extra)
    assert len(package.__all__) == len(set(package.__all__))
    assert set(dir(package)) >= set(package.__all__)
    for name, module_name in exports.items():
        module = importlib.import_module(module_name)
        assert name in vars(module), f"{name} is not defined in {module_name}"
        if hasattr(module, "__all__"):
            assert name in module.__all__, f"{name} is not in {module_name}.__all__"
        assert getattr(package, name) is vars(module)[name]
    tree = ast.parse(Path(package.__file__).read_text(encoding="utf-8"))
    assert _type_checking_names(tree) == set(exports)
