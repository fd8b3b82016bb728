"""A registry's serving pointer: ``serving.json``, its history, and the lock every writer takes.

Two packages write it: ``finetune`` (promote, rollback, start a canary) and ``router`` (a running
router ends a canary on its live evidence). Both go through here, so they take the same lock,
write ``serving.json`` atomically and append the same history lines. Layout::

    root/serving.json     {"version", <the version's files>, "promoted_at", "previous", "reason",
                           optional "canary": {"version", <its files>, "share", "started_at", ...}}
    root/history.jsonl    one JSON line per promote, rollback and canary start or end
    root/.lock            serialises writers across processes (flock)
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
from collections.abc import Iterator, Mapping
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from hybrid_common.errors import ArtifactError
from hybrid_common.files import write_text_atomic

__all__ = ["append_history", "locked", "read_history", "read_serving", "utc_now", "write_serving"]

SERVING_FILE = "serving.json"
HISTORY_FILE = "history.jsonl"


def utc_now() -> datetime:
    return datetime.now(UTC)


@contextlib.contextmanager
def locked(root: str | os.PathLike[str]) -> Iterator[None]:
    """Serialise writers of ``root`` (two retrains, a CLI promote, a router ending a canary)."""
    path = Path(root)
    path.mkdir(parents=True, exist_ok=True)
    with open(path / ".lock", "a+") as fh:
        fcntl.flock(fh.fileno(), fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(fh.fileno(), fcntl.LOCK_UN)


def read_serving(root: str | os.PathLike[str]) -> dict[str, Any] | None:
    """The raw ``serving.json`` (None when nothing was promoted yet)."""
    path = Path(root) / SERVING_FILE
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        return None
    except (OSError, ValueError) as err:
        raise ArtifactError(f"{path}: unreadable: {err}") from err
    if not isinstance(data, dict) or not isinstance(data.get("version"), str):
        raise ArtifactError(f"{path}: no 'version' field")
    return data


def write_serving(root: str | os.PathLike[str], state: Mapping[str, Any]) -> None:
    """Replace ``serving.json`` atomically (call under :func:`locked`)."""
    Path(root).mkdir(parents=True, exist_ok=True)
    write_text_atomic(Path(root) / SERVING_FILE, json.dumps(dict(state), indent=2) + "\n")


def append_history(root: str | os.PathLike[str], entry: Mapping[str, Any]) -> None:
    """Append one durable history line (call under :func:`locked`)."""
    with open(Path(root) / HISTORY_FILE, "a", encoding="utf-8") as fh:
        fh.write(json.dumps(dict(entry), default=str) + "\n")
        fh.flush()
        os.fsync(fh.fileno())


def read_history(root: str | os.PathLike[str]) -> list[dict[str, Any]]:
    """Every history line, oldest first (a line torn by a crash is skipped)."""
    try:
        lines = (Path(root) / HISTORY_FILE).read_text(encoding="utf-8").splitlines()
    except FileNotFoundError:
        return []
    entries = []
    for line in lines:
        with contextlib.suppress(ValueError):
            entry = json.loads(line)
            if isinstance(entry, dict):
                entries.append(entry)
    return entries
