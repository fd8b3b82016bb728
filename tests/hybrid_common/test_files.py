"""Numbered version directories are claimed by the rename, so concurrent writers never collide."""

from __future__ import annotations

import threading
from pathlib import Path

import pytest

from hybrid_common.files import publish_numbered_dir


def _staging(parent: Path, name: str) -> Path:
    path = parent / f".staging-{name}"
    path.mkdir()
    (path / "payload.txt").write_text(name)
    return path


def test_next_free_number(tmp_path: Path) -> None:
    (tmp_path / "v0007").mkdir()
    (tmp_path / "v0007" / "x").write_text("taken")
    (tmp_path / "notes").mkdir()
    assert publish_numbered_dir(_staging(tmp_path, "a"), tmp_path) == "v0008"
    assert (tmp_path / "v0008" / "payload.txt").read_text() == "a"
    assert (tmp_path / "v0007" / "x").read_text() == "taken"


def test_a_writer_that_takes_the_name_first_pushes_us_to_the_next(tmp_path: Path) -> None:
    """Simulates the race: between listing and renaming, another writer claims v0001."""
    seen: list[str] = []

    def rival_claims(name: str) -> None:
        seen.append(name)
        if name == "v0001":
            (tmp_path / "v0001").mkdir()
            (tmp_path / "v0001" / "payload.txt").write_text("rival")

    assert publish_numbered_dir(_staging(tmp_path, "ours"), tmp_path, before_rename=rival_claims) == "v0002"
    assert seen == ["v0001", "v0002"]
    assert (tmp_path / "v0001" / "payload.txt").read_text() == "rival"
    assert (tmp_path / "v0002" / "payload.txt").read_text() == "ours"


def test_concurrent_writers_all_land(tmp_path: Path) -> None:
    stagings = [_staging(tmp_path, str(i)) for i in range(16)]
    barrier = threading.Barrier(len(stagings))
    names: list[str] = []

    def publish(staging: Path) -> None:
        barrier.wait()
        names.append(publish_numbered_dir(staging, tmp_path, before_rename=lambda _: None))

    threads = [threading.Thread(target=publish, args=(s,)) for s in stagings]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert sorted(names) == [f"v{n:04d}" for n in range(1, 17)]
    payloads = sorted((tmp_path / name / "payload.txt").read_text() for name in names)
    assert payloads == sorted(str(i) for i in range(16))


def test_missing_staging_is_an_error_not_a_lost_version(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError):
        publish_numbered_dir(tmp_path / "absent", tmp_path)
