"""One versioned, checksummed artifact directory, written atomically.

Layout: ``manifest.json`` plus the files it lists with their sha256. The manifest carries its
own digest (over its canonical JSON without that field), so an edited class list or threshold
is caught like a swapped weight file. A save is built in a temporary sibling directory and
renamed into place, so readers never see a half-written artifact.
"""

from __future__ import annotations

import json
import os
import shutil
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

from hybrid_common.errors import ArtifactError, ArtifactIntegrityError
from hybrid_common.files import MANIFEST_DIGEST_KEY, manifest_digest, sha256_file

MANIFEST = "manifest.json"
FORMAT = "hybrid-router/embedding-classifier"
# 2: the encoder graph also computes pooling and the head products (classifiers/_onnx_export.py).
# 3: out-of-scope exemplars (a fourth graph input and output, two head arrays, exemplar_weight).
FORMAT_VERSION = 3


def write_artifact(path: str | Path, populate: Callable[[Path], dict[str, Any]]) -> Path:
    """Create the artifact at ``path``: ``populate(tmpdir)`` writes files and returns manifest fields."""
    path = Path(path)
    if path.exists() and not (path / MANIFEST).is_file():
        raise ArtifactError(f"{path} exists and is not a classifier artifact; refusing to overwrite it")
    path.parent.mkdir(parents=True, exist_ok=True)
    staging = path.parent / f".{path.name}.tmp-{uuid.uuid4().hex}"
    staging.mkdir()
    try:
        fields = populate(staging)
        files = {
            p.relative_to(staging).as_posix(): sha256_file(p) for p in sorted(staging.rglob("*")) if p.is_file()
        }
        manifest = {"format": FORMAT, "format_version": FORMAT_VERSION, **fields, "files": files}
        manifest[MANIFEST_DIGEST_KEY] = manifest_digest(manifest)
        (staging / MANIFEST).write_text(json.dumps(manifest, indent=2, sort_keys=True) + "\n", encoding="utf-8")
        _swap_into_place(staging, path)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    return path


def _swap_into_place(staging: Path, path: Path) -> None:
    """Rename ``staging`` to ``path``; an older artifact there is moved aside first, then removed."""
    if not path.exists():
        os.replace(staging, path)
        return
    retired = path.parent / f".{path.name}.old-{uuid.uuid4().hex}"
    os.replace(path, retired)
    os.replace(staging, path)
    shutil.rmtree(retired, ignore_errors=True)


def read_artifact(path: str | Path) -> dict[str, Any]:
    """The verified manifest of the artifact at ``path``.

    Raises :class:`ArtifactError` when there is no artifact and :class:`ArtifactIntegrityError`
    when the format, the manifest digest or any file checksum does not match.
    """
    path = Path(path)
    manifest_file = path / MANIFEST
    if not manifest_file.is_file():
        raise ArtifactError(f"no classifier artifact at {path} (missing {MANIFEST})")
    try:
        manifest = json.loads(manifest_file.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as err:
        raise ArtifactIntegrityError(f"{manifest_file} is not valid JSON: {err}") from err
    if not isinstance(manifest, dict) or manifest.get("format") != FORMAT:
        raise ArtifactIntegrityError(f"{path} is not a {FORMAT} artifact")
    if manifest.get("format_version") != FORMAT_VERSION:
        raise ArtifactIntegrityError(
            f"{path} has format version {manifest.get('format_version')!r}; this library reads {FORMAT_VERSION}"
        )
    if manifest.get(MANIFEST_DIGEST_KEY) != manifest_digest(manifest):
        raise ArtifactIntegrityError(f"{manifest_file} was modified after it was written (digest mismatch)")
    files = manifest.get("files")
    if not isinstance(files, dict) or not files:
        raise ArtifactIntegrityError(f"{manifest_file} lists no files")
    root = path.resolve()
    for name, expected in files.items():
        file = path / name
        if not file.resolve().is_relative_to(root):
            raise ArtifactIntegrityError(f"{manifest_file} lists a file outside the artifact: {name}")
        if not file.is_file():
            raise ArtifactIntegrityError(f"{path} is missing {name}")
        if sha256_file(file) != expected:
            raise ArtifactIntegrityError(f"checksum mismatch for {file}")
    return manifest
