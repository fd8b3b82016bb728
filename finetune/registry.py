"""Versioned local models: each trained adapter, its metrics, and which one the router serves.

The registry is a directory the router can read without importing this package: it only looks at
``serving.json`` and the adapter file it names. Layout, atomic writes, promotion, rollback and the
writers' lock are shared with the classifier registry (:mod:`finetune._version_store`)::

    root/versions/<version>/version.json   ModelVersion as JSON
    root/versions/<version>/adapter.gguf   absent for the "base" version (the base model alone)
    root/serving.json                      the promoted version: what the router serves
    root/history.jsonl                     one line per promote or rollback
"""

from __future__ import annotations

import contextlib
import errno
import hashlib
import os
import shutil
from collections.abc import Mapping
from datetime import datetime
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict, Field

from hybrid_common.errors import ArtifactError, ArtifactIntegrityError
from hybrid_common.files import fsync_dir
from hybrid_common.files import sha256_file as file_sha256

from ._version_store import VALID_NAME, NoRollbackTargetError, VersionStore, utc_now

__all__ = ["BASE_VERSION", "ModelRegistry", "ModelVersion", "NoRollbackTargetError", "file_sha256"]

BASE_VERSION = "base"
ADAPTER_FILE = "adapter.gguf"
DEFAULT_BASE_MODEL = "gemma-3-270m-q4_k_m"


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


class ModelRegistry(VersionStore[ModelVersion]):
    """The model versions under ``root`` and the pointer to the one being served."""

    record_type = ModelVersion

    def _sort_key(self, version: str) -> tuple[int, int, str]:
        return (0, 0, version) if version == BASE_VERSION else super()._sort_key(version)

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
            if version is not None and not VALID_NAME.match(version):
                raise ArtifactError(f"invalid version name {version!r}: letters, digits, '.', '_', '-' only")
            adapter_path = Path(adapter_path)
            if not adapter_path.is_file():
                raise ArtifactError(f"adapter not found: {adapter_path}")
            with open(adapter_path, "rb") as fh:
                if fh.read(4) != b"GGUF":
                    raise ArtifactError(f"{adapter_path} is not a GGUF file (export the adapter with finetune.export)")
        tmp = self._staging_dir()
        try:
            adapter_sha = self._copy_adapter(Path(adapter_path), tmp / ADAPTER_FILE) if adapter_path is not None else None
            record_fields: dict[str, Any] = {
                "created_at": utc_now(),
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

            if version is None:  # the rename claims the next free number, whatever other writers do
                return self._publish_numbered(tmp, lambda name: ModelVersion(version=name, **record_fields))
            self._write_record(tmp, ModelVersion(version=version, **record_fields))
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
            self._write_record(self.versions_dir / version, updated)
        return updated

    # -- reading versions -----------------------------------------------------------------------

    def adapter_path(self, record: ModelVersion | str) -> Path | None:
        """Absolute path of a version's adapter file (None for the base model)."""
        if isinstance(record, str):
            record = self._read(record)
        return self.versions_dir / record.version / record.adapter_file if record.adapter_file else None

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

    def _serving_fields(self, record: ModelVersion) -> dict[str, Any]:
        adapter = self.adapter_path(record)
        return {"adapter_path": str(adapter) if adapter else None, "adapter_sha256": record.adapter_sha256}
