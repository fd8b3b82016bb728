"""Results files that several benchmarks share: each merges its own keys in, keeping the others'."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

__all__ = ["merge_figures"]


def merge_figures(path: Path, figures: dict[str, Any]) -> dict[str, Any]:
    """Write ``figures`` into the JSON object at ``path`` (created if absent); return the merged object."""
    merged = json.loads(path.read_text(encoding="utf-8")) if path.is_file() else {}
    merged.update(figures)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(merged, indent=1, sort_keys=True) + "\n", encoding="utf-8")
    return merged
