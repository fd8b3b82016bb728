"""Versioned local models: each trained adapter, its metrics, and which one the router serves.

The registry is a directory the router can read without importing this package: it only looks at
``serving.json`` and the adapter file it names. Every write is atomic (a temporary file or
directory in the same place, fsync, rename), so a crash leaves either the old state or the new
one, never a half-written version or an unparseable ``serving.json``::

    root/versions/<version>/version.json   ModelVersion as JSON
    root/versions/<version>/adapter.gguf   absent for the "base" version (the base model alone)
    root/serving.json                      the promoted version: what the router serves
    root/history.jsonl                     one line per promote or rollback
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import hashlib
import json
import os
import re
import shutil
import tempfile
import time
from collections.abc import Iterator, Mapping
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from hybrid_common.errors import ArtifactError, ArtifactIntegrityError, RouterError
from hybrid_common.files import fsync_dir, publish_numbered_dir, write_text_atomic
from hybrid_common.files import sha256_file as file_sha256

__all__ = ["BASE_VERSION", "ModelRegistry", "ModelVersion", "NoRollbackTargetError", "file_sha256"]

BASE_VERSION = "base"
ADAPTER_FILE = "adapter.gguf"
DEFAULT_BASE_MODEL = "gemma-3-270m-q4_k_m"
_NUMBERED = re.compile(r"^v(\d{4,})$")
_VALID_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$")
_TMP_PREFIX = ".tmp-"
# A temporary version directory older than this belongs to a writer that died.
_STALE_TMP_S = 3600.0


class NoRollbackTargetError(RouterError):
    """``rollback`` was asked for but nothing served before the current version."""


class ModelVersion(BaseModel):
    """One registered model: the base model alone, or the base plus a LoRA adapter."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    version: str = Field(..., description="Sortable id: 'v0001', 'v0002', … ('base' = the base model, no adapter).")
    created_at: datetime = Field(..., description="When the version was registered (UTC).")
    base_model: str = Field(DEFAULT_BASE_MODEL, description="Path or name of the GGUF base model the adapter applies to.")
    base_sha256: str | None = Field(None, description="sha256 of the base GGUF, when known.")
    adapter_file: str | None = Field(None, description="Adapter file name inside the version directory; None for base.")
    adapter_sha256: str | None = Field(None, description="sha256 of the adapter file, checked before serving.")
    dataset_id: str | None = Field(None, description="Dataset snapshot the adapter was trained on.")
    metrics: dict[str, float] = Field(default_factory=dict, description="Evaluation metrics (finetune.evaluate keys).")
    category_metrics: dict[str, dict[str, float]] = Field(
        default_factory=dict,
        description="The same metrics per category on the frozen set: the evidence the router's quality gate reads.",
    )
    train: dict[str, Any] = Field(default_factory=dict, description="Free-form training facts (epochs, rank, loss, …).")
    notes: str = Field("", description="Anything a human should know about this version.")


def _category_metrics(metrics: Mapping[str, Mapping[str, float]] | None) -> dict[str, dict[str, float]]:
    return {c: {k: float(v) for k, v in m.items()} for c, m in (metrics or {}).items()}


def _now() -> datetime:
    return datetime.now(timezone.utc)


def _sort_key(version: str) -> tuple[int, int, str]:
    if version == BASE_VERSION:
        return (0, 0, version)
    match = _NUMBERED.match(version)
    return (1, int(match.group(1)), version) if match else (2, 0, version)


class ModelRegistry:
    """The model versions under ``root`` and the pointer to the one being served."""

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
        return f"ModelRegistry({str(self.root)!r})"

    # -- writing versions -----------------------------------------------------------------------

    def add(
        self,
        adapter_path: str | os.PathLike[str] | None,
        *,
        metrics: Mapping[str, float],
        category_metrics: Mapping[str, Mapping[str, float]] | None = None,
        dataset_id: str | None = None,
        train: Mapping[str, Any] | None = None,
        base_model: str | os.PathLike[str] = DEFAULT_BASE_MODEL,
        base_sha256: str | None = None,
        version: str | None = None,
        notes: str = "",
    ) -> ModelVersion:
        """Register an adapter (copied in) or, with ``adapter_path=None``, the base model itself.

        Without ``version`` the next free ``vNNNN`` is taken; ``base`` is reserved for the
        adapter-free base model and can be registered once (then use :meth:`update_metrics`).
        """
        if adapter_path is None:
            if version not in (None, BASE_VERSION):
                raise ArtifactError(f"a version without an adapter is the base model; it must be named {BASE_VERSION!r}")
            version = BASE_VERSION
        else:
            if version == BASE_VERSION:
                raise ArtifactError(f"{BASE_VERSION!r} is reserved for the base model without an adapter")
            if version is not None and not _VALID_NAME.match(version):
                raise ArtifactError(f"invalid version name {version!r}: letters, digits, '.', '_', '-' only")
            adapter_path = Path(adapter_path)
            if not adapter_path.is_file():
                raise ArtifactError(f"adapter not found: {adapter_path}")
            with open(adapter_path, "rb") as fh:
                if fh.read(4) != b"GGUF":
                    raise ArtifactError(f"{adapter_path} is not a GGUF file (export the adapter with finetune.export)")
        self.versions_dir.mkdir(parents=True, exist_ok=True)
        self._clean_stale_tmp()
        tmp = Path(tempfile.mkdtemp(prefix=_TMP_PREFIX, dir=self.versions_dir))
        try:
            adapter_sha = self._copy_adapter(Path(adapter_path), tmp / ADAPTER_FILE) if adapter_path is not None else None
            record_fields: dict[str, Any] = {
                "created_at": _now(),
                "base_model": str(base_model),
                "base_sha256": base_sha256,
                "adapter_file": ADAPTER_FILE if adapter_sha else None,
                "adapter_sha256": adapter_sha,
                "dataset_id": dataset_id,
                "metrics": {k: float(v) for k, v in metrics.items()},
                "category_metrics": _category_metrics(category_metrics),
                "train": dict(train or {}),
                "notes": notes,
            }

            def write_record(name: str) -> None:
                record = ModelVersion(version=name, **record_fields)
                write_text_atomic(tmp / "version.json", record.model_dump_json(indent=2) + "\n")

            if version is None:  # the rename claims the next free number, whatever other writers do
                version = publish_numbered_dir(tmp, self.versions_dir, before_rename=write_record)
            else:
                write_record(version)
                try:
                    os.rename(tmp, self.versions_dir / version)  # fails if the version exists
                except OSError as err:
                    if err.errno in (errno.EEXIST, errno.ENOTEMPTY):
                        raise ArtifactError(f"version {version!r} already exists in {self.root}") from err
                    raise
                fsync_dir(self.versions_dir)
            return ModelVersion(version=version, **record_fields)
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)
            raise

    @staticmethod
    def _copy_adapter(source: Path, target: Path) -> str:
        digest = hashlib.sha256()
        with open(source, "rb") as src, open(target, "wb") as dst:
            for block in iter(lambda: src.read(1 << 20), b""):
                digest.update(block)
                dst.write(block)
            dst.flush()
            os.fsync(dst.fileno())
        return digest.hexdigest()

    def _clean_stale_tmp(self) -> None:
        """Remove temporary version directories left by a writer that died mid-``add``."""
        cutoff = time.time() - _STALE_TMP_S
        for path in self.versions_dir.glob(f"{_TMP_PREFIX}*"):
            with contextlib.suppress(OSError):
                if path.stat().st_mtime < cutoff:
                    shutil.rmtree(path, ignore_errors=True)

    def ensure_base(
        self, *, base_model: str | os.PathLike[str] = DEFAULT_BASE_MODEL, base_sha256: str | None = None
    ) -> ModelVersion:
        """The ``base`` version (the base model without an adapter), registered without metrics if absent."""
        with contextlib.suppress(ArtifactError):
            return self._read(BASE_VERSION)
        try:
            return self.add(None, metrics={}, base_model=base_model, base_sha256=base_sha256, notes="the base model alone")
        except ArtifactError:  # registered meanwhile by another process
            return self._read(BASE_VERSION)

    def update_metrics(
        self,
        version: str,
        metrics: Mapping[str, float],
        *,
        eval_set: str | None = None,
        category_metrics: Mapping[str, Mapping[str, float]] | None = None,
    ) -> ModelVersion:
        """Merge ``metrics`` (and per-category metrics) into a version's record; with ``eval_set``
        (the evaluation set's fingerprint) they replace metrics measured on another set, and the
        fingerprint is kept in ``train``."""
        new = {k: float(v) for k, v in metrics.items()}
        new_categories = _category_metrics(category_metrics)
        with self._locked():
            record = self._read(version)
            update: dict[str, Any] = {
                "metrics": {**record.metrics, **new},
                "category_metrics": {**record.category_metrics, **new_categories},
            }
            if eval_set is not None:
                if record.train.get("eval_set") != eval_set:
                    update["metrics"] = new
                    update["category_metrics"] = new_categories
                update["train"] = {**record.train, "eval_set": eval_set}
            updated = record.model_copy(update=update)
            write_text_atomic(self.versions_dir / version / "version.json", updated.model_dump_json(indent=2) + "\n")
        return updated

    # -- reading versions -----------------------------------------------------------------------

    def versions(self) -> list[ModelVersion]:
        """Every complete version, base first, then in version order (temporary leftovers ignored)."""
        if not self.versions_dir.is_dir():
            return []
        names = [
            p.name
            for p in self.versions_dir.iterdir()
            if not p.name.startswith(".") and (p / "version.json").is_file()
        ]
        return [self._read(name) for name in sorted(names, key=_sort_key)]

    def get(self, version: str, *, verify: bool = True) -> ModelVersion:
        """A version's record; with ``verify``, its adapter must match the recorded sha256."""
        record = self._read(version)
        if verify:
            self._verify(record)
        return record

    def adapter_path(self, record: ModelVersion | str) -> Path | None:
        """Absolute path of a version's adapter file (None for the base model)."""
        if isinstance(record, str):
            record = self._read(record)
        return self.versions_dir / record.version / record.adapter_file if record.adapter_file else None

    def _read(self, version: str) -> ModelVersion:
        if not _VALID_NAME.match(version):
            raise ArtifactError(f"invalid version name {version!r}")
        path = self.versions_dir / version / "version.json"
        try:
            return ModelVersion.model_validate_json(path.read_text(encoding="utf-8"))
        except FileNotFoundError:
            known = ", ".join(v.version for v in self.versions()) or "none"
            raise ArtifactError(f"no version {version!r} in registry {self.root} (known: {known})") from None
        except (OSError, ValidationError) as err:
            raise ArtifactError(f"{path}: unreadable version record: {err}") from err

    def _verify(self, record: ModelVersion) -> None:
        path = self.adapter_path(record)
        if path is None:
            return
        try:
            actual = file_sha256(path)
        except OSError as err:
            raise ArtifactIntegrityError(f"version {record.version}: adapter missing or unreadable: {err}") from err
        if actual != record.adapter_sha256:
            raise ArtifactIntegrityError(
                f"version {record.version}: adapter {path} has sha256 {actual}, expected {record.adapter_sha256}"
            )

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

    def serving(self, *, verify: bool = False) -> ModelVersion | None:
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

    def promote(self, version: str, reason: str = "") -> ModelVersion:
        """Make ``version`` the served model (its adapter checksum verified first)."""
        with self._locked():
            record = self.get(version)
            state = self.serving_state()
            current = state["version"] if state else None
            if current == version:
                return record
            self._point_to(record, previous=current, action="promote", reason=reason)
        return record

    def rollback(self, reason: str = "") -> ModelVersion:
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

    def _point_to(
        self, record: ModelVersion, *, previous: str | None, action: str, reason: str, replaced: str | None = None
    ) -> None:
        adapter = self.adapter_path(record)
        at = _now().isoformat()
        state = {
            "version": record.version,
            "adapter_path": str(adapter) if adapter else None,
            "adapter_sha256": record.adapter_sha256,
            "promoted_at": at,
            "previous": previous,
        }
        self.root.mkdir(parents=True, exist_ok=True)
        write_text_atomic(self.serving_path, json.dumps(state, indent=2) + "\n")
        entry = {"action": action, "version": record.version, "previous": previous, "at": at, "reason": reason}
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
