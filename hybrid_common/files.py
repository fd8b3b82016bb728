"""Durable file helpers shared by everything that writes artifacts (classifier, datasets, registry).

An artifact a crash can half-write is an artifact a server can half-load: content goes to a
temporary file in the same directory, is fsynced, renamed over the target, and the directory
entry is fsynced too. Checksums are streamed so large model files never sit in memory. Numbered
versions (``v0001``, ``v0002`` …) are claimed by the rename itself, so two writers racing for the
next number never overwrite each other.
"""

from __future__ import annotations

import errno
import hashlib
import json
import os
import re
import tempfile
from collections.abc import Callable, Iterable, Mapping
from pathlib import Path
from typing import Any

from hybrid_common.errors import ArtifactError, ArtifactIntegrityError

__all__ = [
    "MANIFEST_DIGEST_KEY",
    "MANIFEST_FILE",
    "fsync_dir",
    "manifest_digest",
    "publish_numbered_dir",
    "read_manifest",
    "sha256_file",
    "write_lines_atomic",
    "write_text_atomic",
]

# A manifest carries the digest of its own other fields, so an edited manifest is detected too.
MANIFEST_DIGEST_KEY = "manifest_sha256"
MANIFEST_FILE = "manifest.json"


def sha256_file(path: str | os.PathLike[str]) -> str:
    """Hex sha256 of a file, read in 1 MiB blocks."""
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def manifest_digest(manifest: Mapping[str, Any]) -> str:
    """sha256 of a manifest's canonical JSON, leaving out its own ``manifest_sha256`` field."""
    body = {k: v for k, v in manifest.items() if k != MANIFEST_DIGEST_KEY}
    return hashlib.sha256(json.dumps(body, sort_keys=True, separators=(",", ":")).encode()).hexdigest()


def read_manifest(directory: str | os.PathLike[str]) -> dict[str, Any]:
    """The ``manifest.json`` of an artifact directory, with its own digest checked.

    Cheap (no listed file is hashed): it says which artifact a directory holds and that the
    manifest was not edited; whoever loads the files checks them against it.
    """
    path = Path(directory) / MANIFEST_FILE
    try:
        manifest = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise ArtifactError(f"no artifact at {directory} (missing {MANIFEST_FILE})") from None
    except (OSError, ValueError) as err:
        raise ArtifactIntegrityError(f"{path} is unreadable: {err}") from err
    if not isinstance(manifest, dict) or manifest.get(MANIFEST_DIGEST_KEY) != manifest_digest(manifest):
        raise ArtifactIntegrityError(f"{path} was modified after it was written (digest mismatch)")
    return manifest


def fsync_dir(path: str | os.PathLike[str]) -> None:
    """Make a rename or a new entry in ``path`` durable."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def write_text_atomic(path: str | os.PathLike[str], text: str) -> None:
    """Replace ``path`` with ``text``: readers see the old file or the new one, never a mix."""
    write_lines_atomic(path, [text])


def write_lines_atomic(path: str | os.PathLike[str], lines: Iterable[str]) -> str:
    """Replace ``path`` with ``lines`` (UTF-8), streamed through a fsynced temporary file, never all
    in memory; returns their sha256. Readers see the old file or the new one, never a mix."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    digest = hashlib.sha256()
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as fh:
            for line in lines:
                raw = line.encode("utf-8")
                digest.update(raw)
                fh.write(raw)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    fsync_dir(path.parent)
    return digest.hexdigest()


def publish_numbered_dir(
    staging: str | os.PathLike[str],
    parent: str | os.PathLike[str],
    *,
    prefix: str = "v",
    width: int = 4,
    before_rename: Callable[[str], None] | None = None,
) -> str:
    """Rename the finished directory ``staging`` to ``parent/<prefix>NNNN``, the next free number.

    The rename is the claim: it fails when another writer took the name first (the directory
    exists and is not empty), and the next number is tried. ``before_rename(name)`` runs before
    each attempt, for content that records its own name. Returns the name taken.
    """
    parent = Path(parent)
    numbered = re.compile(rf"^{re.escape(prefix)}(\d{{{width},}})$")
    taken = [int(m.group(1)) for p in parent.iterdir() if (m := numbered.match(p.name))]
    start = max(taken, default=0) + 1
    for n in range(start, start + 1000):
        name = f"{prefix}{n:0{width}d}"
        if before_rename is not None:
            before_rename(name)
        try:
            os.rename(staging, parent / name)
        except OSError as err:
            if err.errno not in (errno.EEXIST, errno.ENOTEMPTY):
                raise
            continue
        fsync_dir(parent)
        return name
    raise ArtifactError(f"could not claim a free version number in {parent}")
