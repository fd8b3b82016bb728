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
import os
import re
import shutil
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, ClassVar, Generic, TypeVar

from pydantic import BaseModel, ValidationError

from hybrid_common.errors import ArtifactError, RouterError
from hybrid_common.files import publish_numbered_dir, write_text_atomic
from hybrid_common.serving_pointer import append_history, locked, read_history, read_serving, utc_now, write_serving

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
        return read_serving(self.root)

    def serving(self, *, verify: bool = False) -> R | None:
        """The version the router serves, or None when nothing was promoted yet."""
        state = self.serving_state()
        return None if state is None else self.get(state["version"], verify=verify)

    def history(self) -> list[dict[str, Any]]:
        """Every promote, rollback and canary start or end, oldest first (a line torn by a crash is skipped)."""
        return read_history(self.root)

    def promote(self, version: str, reason: str = "") -> R:
        """Serve ``version`` (its files verified first). Promoting the running canary ends it as
        promoted; promoting another version retires the canary."""
        from router.canary import canary_spec, end_canary

        spec = canary_spec(self.serving_state())
        if spec is not None and spec.version == version:
            record = self.get(version)
            if end_canary(self.root, spec, "promote", reason=reason or "promoted by hand"):
                return record
        with self._locked():
            record = self.get(version)
            state = self.serving_state()
            current = state["version"] if state else None
            if current == version:
                return record
            self._retire_canary(state, f"{version} promoted instead")
            self._point_to(record, previous=current, action="promote", reason=reason)
        return record

    def abort_canary(self, reason: str = "") -> str:
        """Retire the running canary by hand; the serving version keeps all traffic. Returns its version."""
        from router.canary import canary_spec, end_canary

        spec = canary_spec(self.serving_state())
        if spec is None or not end_canary(self.root, spec, "abort", reason=reason or "aborted by hand"):
            raise RouterError(f"no canary is running in {self.root}")
        return spec.version

    def _retire_canary(self, state: dict[str, Any] | None, why: str) -> None:
        """A promotion or rollback rewrites ``serving.json`` whole: say in the history that its canary ended."""
        canary = state.get("canary") if state else None
        if isinstance(canary, dict) and state is not None:
            append_history(self.root, {
                "action": "canary_abort", "version": canary.get("version"), "serving": state["version"],
                "share": canary.get("share"), "at": utc_now().isoformat(), "reason": why, "evidence": {},
            })  # fmt: skip

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
            self._retire_canary(state, f"rolled back to {target}")
            self._point_to(record, previous=before, action="rollback", reason=reason, replaced=state["version"])
        return record

    def start_canary(self, version: str, share: float, reason: str = "") -> R:
        """Let ``version`` serve ``share`` of local traffic beside the serving version, until a running
        router's live evidence (or an operator) promotes it or rolls it back (:mod:`router.canary`)."""
        if not 0 < share < 1:
            raise RouterError(f"a canary share must be between 0 and 1 (exclusive), got {share}")
        with self._locked():
            record = self.get(version)
            state = self.serving_state()
            if state is None:
                raise RouterError(f"nothing is being served from {self.root}: promote a first version without --canary")
            if state["version"] == version:
                raise RouterError(f"{version} is already the serving version")
            running = state.get("canary")
            if isinstance(running, dict) and running.get("version") not in (None, version):
                raise RouterError(
                    f"canary {running.get('version')} is still running: abort or promote it first (router models canary abort|promote)"
                )
            at = utc_now().isoformat()
            canary = {"version": version, **self._serving_fields(record), "share": share, "started_at": at, "reason": reason}
            write_serving(self.root, {**state, "canary": canary})
            append_history(self.root, {
                "action": "canary_start", "version": version, "serving": state["version"], "share": share, "at": at, "reason": reason,
            })  # fmt: skip
        return record

    def canary(self) -> dict[str, Any] | None:
        """The running canary's block of ``serving.json`` (None when no canary runs)."""
        state = self.serving_state()
        block = state.get("canary") if state else None
        return block if isinstance(block, dict) else None

    def _point_to(self, record: R, *, previous: str | None, action: str, reason: str, replaced: str | None = None) -> None:
        version: str = record.version  # type: ignore[attr-defined]
        at = utc_now().isoformat()
        state = {"version": version, **self._serving_fields(record), "promoted_at": at, "previous": previous, "reason": reason}
        write_serving(self.root, state)  # a promotion or rollback ends any canary: serving.json is rewritten whole
        entry = {"action": action, "version": version, "previous": previous, "at": at, "reason": reason}
        if replaced is not None:
            entry["replaced"] = replaced
        append_history(self.root, entry)

    def _locked(self) -> contextlib.AbstractContextManager[None]:
        """Serialise writers (two ``router retrain`` runs, a CLI promote, a router ending a canary) across processes."""
        return locked(self.root)
