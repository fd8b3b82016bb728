"""hybrid_common's surface, and that it stays a leaf: importing it loads nothing of the project above it."""

from __future__ import annotations

import json
import subprocess
import sys

import hybrid_common


def test_all_is_the_export_table_and_resolves() -> None:
    from tests.exports import check_lazy_exports

    check_lazy_exports(hybrid_common)


def test_importing_every_module_loads_no_other_project_package() -> None:
    code = (
        "import sys, json, pkgutil, importlib, hybrid_common\n"
        "for m in pkgutil.iter_modules(hybrid_common.__path__): importlib.import_module('hybrid_common.' + m.name)\n"
        "print(json.dumps(sorted({n.split('.')[0] for n in sys.modules} & {'router', 'classifiers', 'finetune', 'evals'})))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert json.loads(out.strip().splitlines()[-1]) == []


def test_a_submodule_import_does_not_shadow_the_function_it_exports() -> None:
    """``finetune.retrain`` is a function defined in ``finetune/retrain.py``: importing the module must not replace it."""
    code = (
        "import finetune.retrain, finetune, types\n"
        "from finetune import retrain\n"
        "print(isinstance(retrain, types.FunctionType), finetune.retrain is retrain)"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.split() == ["True", "True"]
