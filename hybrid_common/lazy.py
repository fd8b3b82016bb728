"""PEP 562 lazy exports shared by every package of the project.

A package maps each public name to the module that defines it; the module is imported on first
access, so importing the package stays fast and loads no model runtime.

One trap is handled here: when an exported function shares its name with the submodule that
defines it (``finetune.retrain`` the function, in ``finetune/retrain.py``), importing that
submodule makes Python set the package attribute to the *module*, shadowing the function for
everyone afterwards. The package's module object therefore refuses to let a submodule replace an
exported name; the submodule itself stays importable through ``sys.modules`` as usual.
"""

from __future__ import annotations

import importlib
import sys
import types
from collections.abc import Callable, Mapping
from typing import Any

__all__ = ["lazy_exports"]


class _ExportingModule(types.ModuleType):
    """A package module whose exported names cannot be replaced by same-named submodules."""

    _lazy_exports: frozenset[str] = frozenset()

    def __setattr__(self, name: str, value: Any) -> None:
        if isinstance(value, types.ModuleType) and name in self._lazy_exports:
            return  # the import system binding the submodule: __getattr__ serves the function instead
        super().__setattr__(name, value)


def lazy_exports(
    package: str, exports: Mapping[str, str], namespace: dict[str, Any], extra: tuple[str, ...] = ()
) -> tuple[list[str], Callable[[str], Any], Callable[[], list[str]]]:
    """``(__all__, __getattr__, __dir__)`` for ``package``; loaded names are cached in ``namespace``."""
    names = sorted([*exports, *extra])
    module = sys.modules.get(package)
    if module is not None and type(module) is types.ModuleType:
        module.__class__ = _ExportingModule
        module._lazy_exports = frozenset(name for name, source in exports.items() if source == f"{package}.{name}")

    def __getattr__(name: str) -> Any:  # noqa: N807 - the module hook's name
        source = exports.get(name)
        if source is None:
            raise AttributeError(f"module {package!r} has no attribute {name!r}")
        value = getattr(importlib.import_module(source), name)
        namespace[name] = value
        return value

    def __dir__() -> list[str]:  # noqa: N807 - the module hook's name
        return names

    return names, __getattr__, __dir__
