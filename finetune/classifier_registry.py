"""Versioned query classifiers: each saved artifact, what produced it, and which one the router serves.

The same conventions as the model registry (:mod:`finetune.registry`): numbered versions claimed
by an atomic rename, ``serving.json`` and ``history.jsonl`` beside them, one writers' lock. A
router with ``classifier.registry_path`` set reads only ``serving.json`` and the artifact's
manifest, and swaps a newly promoted classifier in without a restart::

    root/versions/vNNNN/version.json   ClassifierVersion as JSON
    root/versions/vNNNN/classifier/    the EmbeddingClassifier artifact (manifest.json + files)
    root/serving.json                  version, artifact_path (relative to root), manifest_sha256, …
    root/history.jsonl                 one line per promote or rollback
"""

from __future__ import annotations

import contextlib
import os
import shutil
from collections.abc import Mapping, Sequence
from datetime import datetime
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict, Field

from hybrid_common.errors import ArtifactError, ArtifactIntegrityError
from hybrid_common.files import MANIFEST_DIGEST_KEY, read_manifest

from ._version_store import NoRollbackTargetError, VersionStore, utc_now

__all__ = ["ARTIFACT_DIR", "ClassifierRegistry", "ClassifierVersion", "NoRollbackTargetError"]

ARTIFACT_DIR = "classifier"


class ClassifierVersion(BaseModel):
    """One registered classifier artifact and where it came from."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    version: str = Field(..., description="Sortable id: 'v0001', 'v0002', …")
    created_at: datetime = Field(..., description="When the version was registered (UTC).")
    categories: list[str] = Field(..., description="The categories it routes to (the artifact's classes are in its manifest).")
    source: str = Field(..., description="What produced it, e.g. 'router categories apply' or 'update_classifier'.")
    metrics: dict[str, float] = Field(default_factory=dict, description="Held-out figures (accuracy, edge recall, …).")
    note: str = Field("", description="Anything a human should know about this version.")
    private_categories: list[str] = Field(
        default_factory=list, description="Categories whose queries never leave the machine (added to routing.private_categories)."
    )
    aliases: dict[str, list[str]] = Field(
        default_factory=dict, description="Earlier names of each category (renames, merges): its evidence follows it."
    )
    manifest_sha256: str = Field(..., description="The artifact manifest's own digest; the manifest lists every file's sha256.")


def _fsync_tree(root: Path) -> None:
    """Make every file copied under ``root`` durable before the version is published."""
    for path in root.rglob("*"):
        if path.is_file():
            fd = os.open(path, os.O_RDONLY)
            try:
                os.fsync(fd)
            finally:
                os.close(fd)


class ClassifierRegistry(VersionStore[ClassifierVersion]):
    """The classifier versions under ``root`` and the pointer to the one the router serves."""

    record_type = ClassifierVersion

    def add(
        self,
        artifact_dir: str | os.PathLike[str],
        *,
        categories: Sequence[str],
        source: str,
        metrics: Mapping[str, float] | None = None,
        note: str = "",
        move: bool = False,
        private_categories: Sequence[str] = (),
        aliases: Mapping[str, Sequence[str]] | None = None,
    ) -> ClassifierVersion:
        """Register a saved :class:`~classifiers.EmbeddingClassifier` artifact as the next ``vNNNN``.

        The artifact is copied in (``move=True`` moves it instead, cheap on the same filesystem)
        and verified file by file before the version becomes visible; nothing is promoted.
        """
        artifact_dir = Path(artifact_dir)
        digest = read_manifest(artifact_dir)[MANIFEST_DIGEST_KEY]
        names = [str(c) for c in categories]
        if not names or any(not c.strip() for c in names) or len(set(names)) != len(names):
            raise ArtifactError(f"categories must be distinct non-empty names, got {names!r}")
        unknown = sorted(set(private_categories) - set(names))
        if unknown:
            raise ArtifactError(f"private categories {unknown} are not among the version's categories {names}")
        tmp = self._staging_dir()
        target = tmp / ARTIFACT_DIR
        try:
            if move:
                shutil.move(artifact_dir, target)
            else:
                shutil.copytree(artifact_dir, target)
            _fsync_tree(target)
            self._verify_artifact(target, digest, label=str(artifact_dir))
            fields: dict[str, Any] = {
                "created_at": utc_now(),
                "categories": names,
                "source": source,
                "metrics": {k: float(v) for k, v in (metrics or {}).items()},
                "note": note,
                "private_categories": list(private_categories),
                "aliases": {k: list(v) for k, v in (aliases or {}).items()},
                "manifest_sha256": digest,
            }
            return self._publish_numbered(tmp, lambda name: ClassifierVersion(version=name, **fields))
        except BaseException:
            if move and target.exists() and not artifact_dir.exists():
                with contextlib.suppress(OSError):
                    shutil.move(target, artifact_dir)  # give the caller its artifact back
            shutil.rmtree(tmp, ignore_errors=True)
            raise

    def artifact_path(self, record: ClassifierVersion | str) -> Path:
        """Absolute path of a version's artifact directory (what ``EmbeddingClassifier.load`` takes)."""
        if isinstance(record, str):
            record = self._read(record)
        return self.versions_dir / record.version / ARTIFACT_DIR

    def _verify(self, record: ClassifierVersion) -> None:
        self._verify_artifact(self.artifact_path(record), record.manifest_sha256, label=f"version {record.version}")

    @staticmethod
    def _verify_artifact(path: Path, manifest_sha256: str, *, label: str) -> None:
        """The manifest is the one recorded, and every file matches its checksum (the classifier's own load check)."""
        from classifiers import EmbeddingClassifier

        try:
            found = read_manifest(path)[MANIFEST_DIGEST_KEY]
            if found != manifest_sha256:
                raise ArtifactIntegrityError(f"manifest digest {found}, expected {manifest_sha256}")
            EmbeddingClassifier.load(path, threads=1)
        except ArtifactError as err:
            raise ArtifactIntegrityError(f"classifier {label}: {err}") from err

    def _serving_fields(self, record: ClassifierVersion) -> dict[str, Any]:
        return {
            "artifact_path": self.artifact_path(record).relative_to(self.root).as_posix(),
            "manifest_sha256": record.manifest_sha256,
            "private_categories": list(record.private_categories),
            "aliases": {k: list(v) for k, v in record.aliases.items()},
        }
