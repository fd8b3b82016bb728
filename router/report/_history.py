"""The model registry's history as a report shows it: promotions, rollbacks and canary decisions.

Read straight from the registry directory (``history.jsonl`` and ``serving.json``, through
:mod:`hybrid_common.serving_pointer`), never through ``finetune``, which writes them. Lines are
free-form JSON: a promotion names ``previous``, a canary decision ``serving``, ``share`` and its
``evidence``; the report shows whatever a line holds.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

__all__ = ["RegistryHistory", "read_registry_history"]


@dataclass(frozen=True)
class RegistryHistory:
    """The registry's history lines inside a window, and what to say when there are none."""

    registry: Path | None
    entries: list[dict[str, Any]] = field(default_factory=list)
    outside: int = 0
    """History lines outside the window."""
    serving: dict[str, Any] | None = None
    note: str = ""
    """Why the table is empty, or what serves now."""
    live: dict[str, Any] | None = None
    """A running canary's evidence so far, rebuilt from the log (:func:`router.canary.live_evidence`)."""


def read_registry_history(registry: Path | None, *, since: str | None, until: str | None) -> RegistryHistory:
    """The history lines of ``registry`` dated in the days ``since`` .. ``until`` (inclusive), oldest first."""
    from hybrid_common.errors import ArtifactError
    from hybrid_common.serving_pointer import read_history, read_serving

    if registry is None:
        return RegistryHistory(None, note="No model registry is configured (local.registry_path): no version history to show.")
    if not registry.is_dir():
        return RegistryHistory(registry, note=f"No model registry at {registry}: no version history to show.")
    every = read_history(registry)  # a line torn by a crash is skipped
    inside = [e for e in every if (since is None or str(e.get("at", ""))[:10] >= since[:10])
              and (until is None or str(e.get("at", ""))[:10] <= until[:10])]  # fmt: skip
    if not every:
        note = f"The model registry at {registry} has no promotion, rollback or canary yet."
    elif not inside:
        note = f"No promotion, rollback or canary in this window ({len(every)} outside it, the last at {every[-1].get('at', '?')})."
    else:
        note = f"{len(inside)} decisions in this window, {len(every) - len(inside)} outside it."
    try:
        serving = read_serving(registry)
    except ArtifactError as err:  # the history is still worth showing
        return RegistryHistory(registry, inside, len(every) - len(inside), None, f"{note} {err}.")
    if serving is not None:
        canary = serving.get("canary")
        now = f", canary {canary.get('version', '?')} on {_share(canary.get('share'))} of local traffic" if isinstance(canary, dict) else ""
        note += f" Serving now: {serving.get('version', '?')}{now}."
    return RegistryHistory(registry, inside, len(every) - len(inside), serving, note)


def _share(value: Any) -> str:
    return f"{value:.0%}" if isinstance(value, (int, float)) else "?"
