"""finetune's public API: every name in __all__ resolves, and importing the package loads no torch."""

from __future__ import annotations

import subprocess
import sys

import finetune


def test_all_is_the_export_table_and_resolves() -> None:
    from tests.exports import check_lazy_exports

    check_lazy_exports(finetune)


def test_import_finetune_is_light() -> None:
    code = "import sys, finetune; print(sorted(m for m in ('torch', 'transformers', 'peft', 'llama_cpp') if m in sys.modules))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.strip()
    assert out == "[]"
