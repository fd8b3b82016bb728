"""What the model and classifier registries share: versions, the serving pointer, its history, the lock.

A registry is a directory the router reads without importing this package (it looks only at
``serving.json`` and the files it names). Every write is atomic (a temporary file or directory in
the same place, fsync, rename), so a crash leaves the old state or the new one, never a
half-written version or an unparseable ``serving.json``::

    root/versions/<version>/version.json   the version's record (a pydantic model)
    root/serving.json                      the promoted version: what the router serves
    root/history.jsonl                     one line per promote or rollback
    root/.lock                             serialises writers across processes

Subclasses say what a version holds: the record type, how its files are verified and which of
their fields ``serving.json`` carries for the router.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import re
import shutil
import tempfile
import time
from collections.abc import Callable, Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, ClassVar, Generic, TypeVar

from pydantic import BaseModel, ValidationError

from hybrid_common.errors import ArtifactError, RouterError
from hybrid_common.files import publish_numbered_dir, write_text_atomic

__all__ = ["NoRollbackTargetError", "VersionStore", "utc_now"]

NUMBERED = re.compile(r"^v(\d{4,})$")
VALID_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$")
_TMP_PREFIX = ".tmp-"
# A temporary version directory older than this belongs to a writer that died.
_STALE_TMP_S = 3600.0
RECORD_FILE = "version.json"


class NoRollbackTargetError(RouterError):
    """``rollback`` was asked for but nothing served before the current version."""


R = TypeVar("R", bound=BaseModel)


def utc_now() -> datetime:
    return datetime.now(UTC)


class VersionStore(Generic[R]):
    """The versions under ``root`` and the pointer to the one being served."""

    record_type: ClassVar[type[BaseModel]]

    def __init__(self, root: str | os.PathLike[str]) -> None:
        self.root = Path(root).resolve()

    @property
    def versions_dir(self) -> Path:
        return self.root / "versions"

    @property
    def serving_path(self) -> Path:
        return self.root / "serving.json"

    @property
    def history_path(self) -> Path:
        return self.root / "history.jsonl"

    def __repr__(self) -> str:
        return f"{type(self).__name__}({str(self.root)!r})"

    # -- hooks ----------------------------------------------------------------------------------

    def _verify(self, record: R) -> None:
        """Raise :class:`ArtifactIntegrityError` when the version's files do not match its record."""
        raise NotImplementedError

    def _serving_fields(self, record: R) -> dict[str, Any]:
        """What ``serving.json`` tells the router about the version besides its name."""
        raise NotImplementedError

    def _sort_key(self, version: str) -> tuple[int, int, str]:
        match = NUMBERED.match(version)
        return (1, int(match.group(1)), version) if match else (2, 0, version)

    # -- writing versions -----------------------------------------------------------------------

    def _staging_dir(self) -> Path:
        """A fresh temporary directory among the versions, for a version being assembled."""
        self.versions_dir.mkdir(parents=True, exist_ok=True)
        self._clean_stale_tmp()
        return Path(tempfile.mkdtemp(prefix=_TMP_PREFIX, dir=self.versions_dir))

    def _clean_stale_tmp(self) -> None:
        """Remove temporary version directories left by a writer that died mid-``add``."""
        cutoff = time.time() - _STALE_TMP_S
        for path in self.versions_dir.glob(f"{_TMP_PREFIX}*"):
            with contextlib.suppress(OSError):
                if path.stat().st_mtime < cutoff:
                    shutil.rmtree(path, ignore_errors=True)

    @staticmethod
    def _write_record(directory: Path, record: BaseModel) -> None:
        write_text_atomic(directory / RECORD_FILE, record.model_dump_json(indent=2) + "\n")

    def _publish_numbered(self, staging: Path, make_record: Callable[[str], R]) -> R:
        """Rename ``staging`` to the next free ``vNNNN``, its record written under the name it gets."""
        records: dict[str, R] = {}

        def write(name: str) -> None:
            records[name] = make_record(name)
            self._write_record(staging, records[name])

        return records[publish_numbered_dir(staging, self.versions_dir, before_rename=write)]

    # -- reading versions -----------------------------------------------------------------------

    def versions(self) -> list[R]:
        """Every complete version in version order (temporary leftovers ignored)."""
        if not self.versions_dir.is_dir():
            return []
        names = [
            p.name for p in self.versions_dir.iterdir() if not p.name.startswith(".") and (p / RECORD_FILE).is_file()
        ]
        return [self._read(name) for name in sorted(names, key=self._sort_key)]

    def get(self, version: str, *, verify: bool = True) -> R:
        """A version's record; with ``verify``, its files must match the recorded checksums."""
        record = self._read(version)
        if verify:
            self._verify(record)
        return record

    def _read(self, version: str) -> R:
        if not VALID_NAME.match(version):
            raise ArtifactError(f"invalid version name {version!r}")
        path = self.versions_dir / version / RECORD_FILE
        try:
            return self.record_type.model_validate_json(path.read_text(encoding="utf-8"))  # type: ignore[return-value]
        except FileNotFoundError:
            known = ", ".join(v.version for v in self.versions()) or "none"  # type: ignore[attr-defined]
            raise ArtifactError(f"no version {version!r} in registry {self.root} (known: {known})") from None
        except (OSError, ValidationError) as err:
            raise ArtifactError(f"{path}: unreadable version record: {err}") from err

    # -- serving pointer ------------------------------------------------------------------------

    def serving_state(self) -> dict[str, Any] | None:
        """The raw ``serving.json`` (None when nothing was promoted yet)."""
        try:
            data = json.loads(self.serving_path.read_text(encoding="utf-8"))
        except FileNotFoundError:
            return None
        except (OSError, ValueError) as err:
            raise ArtifactError(f"{self.serving_path}: unreadable: {err}") from err
        if not isinstance(data, dict) or not isinstance(data.get("version"), str):
            raise ArtifactError(f"{self.serving_path}: no 'version' field")
        return data

    def serving(self, *, verify: bool = False) -> R | None:
        """The version the router serves, or None when nothing was promoted yet."""
        state = self.serving_state()
        return None if state is None else self.get(state["version"], verify=verify)

    def history(self) -> list[dict[str, Any]]:
        """Every promote and rollback, oldest first (a line torn by a crash is skipped)."""
        try:
            lines = self.history_path.read_text(encoding="utf-8").splitlines()
        except FileNotFoundError:
            return []
        entries = []
        for line in lines:
            with contextlib.suppress(ValueError):
                entry = json.loads(line)
                if isinstance(entry, dict):
                    entries.append(entry)
        return entries

    def promote(self, version: str, reason: str = "") -> R:
        """Serve ``version`` (its files verified first)."""
        with self._locked():
            record = self.get(version)
            state = self.serving_state()
            current = state["version"] if state else None
            if current == version:
                return record
            self._point_to(record, previous=current, action="promote", reason=reason)
        return record

    def rollback(self, reason: str = "") -> R:
        """Serve again the version that served before the current one."""
        with self._locked():
            state = self.serving_state()
            if state is None:
                raise NoRollbackTargetError(f"nothing is being served from {self.root}; nothing to roll back")
            target = state.get("previous")
            if not target:
                raise NoRollbackTargetError(
                    f"version {state['version']} is the first served version in {self.root}; nothing to roll back to"
                )
            record = self.get(target)
            # The version served before the target is what the target replaced when it last became serving.
            before = next(
                (e.get("previous") for e in reversed(self.history()) if e.get("version") == target),
                None,
            )
            self._point_to(record, previous=before, action="rollback", reason=reason, replaced=state["version"])
        return record

    def _point_to(self, record: R, *, previous: str | None, action: str, reason: str, replaced: str | None = None) -> None:
        version: str = record.version  # type: ignore[attr-defined]
        at = utc_now().isoformat()
        state = {"version": version, **self._serving_fields(record), "promoted_at": at, "previous": previous, "reason": reason}
        self.root.mkdir(parents=True, exist_ok=True)
        write_text_atomic(self.serving_path, json.dumps(state, indent=2) + "\n")
        entry = {"action": action, "version": version, "previous": previous, "at": at, "reason": reason}
        if replaced is not None:
            entry["replaced"] = replaced
        with open(self.history_path, "a", encoding="utf-8") as fh:
            fh.write(json.dumps(entry) + "\n")
            fh.flush()
            os.fsync(fh.fileno())

    @contextlib.contextmanager
    def _locked(self) -> Iterator[None]:
        """Serialise writers (two ``router retrain`` runs, a CLI promote) across processes."""
        self.root.mkdir(parents=True, exist_ok=True)
        with open(self.root / ".lock", "a+") as fh:
            fcntl.flock(fh.fileno(), fcntl.LOCK_EX)
            try:
                yield
            finally:
                fcntl.flock(fh.fileno(), fcntl.LOCK_UN)
