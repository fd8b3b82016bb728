"""The classifier registry: real artifacts in, numbered versions, promote and rollback, tampering refused."""

from __future__ import annotations

import json
import threading
from pathlib import Path

import pytest

from classifiers import EmbeddingClassifier
from finetune.classifier_registry import ClassifierRegistry
from finetune.registry import NoRollbackTargetError
from hybrid_common.errors import ArtifactError, ArtifactIntegrityError
from hybrid_common.files import MANIFEST_DIGEST_KEY, manifest_digest, read_manifest
from tests.finetune.conftest import write_classifier_variant

CATEGORIES = ["DELIVERY", "FEEDBACK", "ORDER", "PAYMENT"]


@pytest.fixture(scope="module")
def variant_a(classifier_path: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_classifier_variant(classifier_path, tmp_path_factory.mktemp("variants") / "a")


@pytest.fixture(scope="module")
def variant_b(classifier_path: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_classifier_variant(classifier_path, tmp_path_factory.mktemp("variants") / "b", prefix="B-")


def copy_of(artifact: Path, dest: Path) -> Path:
    import shutil

    return Path(shutil.copytree(artifact, dest))


def test_add_promote_rollback_walk_the_history(tmp_path: Path, variant_a: Path, variant_b: Path) -> None:
    registry = ClassifierRegistry(tmp_path / "registry")
    first = registry.add(variant_a, categories=CATEGORIES, source="test", metrics={"accuracy": 0.9}, note="first")
    moved = copy_of(variant_b, tmp_path / "to-move")
    second = registry.add(moved, categories=[f"B-{c}" for c in CATEGORIES], source="router categories apply", move=True)

    assert (first.version, second.version) == ("v0001", "v0002")
    assert variant_a.is_dir() and not moved.exists()  # copied, then moved
    assert [v.version for v in registry.versions()] == ["v0001", "v0002"]
    record = registry.get("v0001")
    assert record == first and record.metrics == {"accuracy": 0.9} and record.note == "first" and record.source == "test"
    assert record.manifest_sha256 == read_manifest(variant_a)[MANIFEST_DIGEST_KEY]
    assert EmbeddingClassifier.load(registry.artifact_path("v0002")).classes_.tolist() == [f"B-{c}" for c in CATEGORIES]

    assert registry.serving() is None
    with pytest.raises(NoRollbackTargetError, match="nothing is being served"):
        registry.rollback()
    registry.promote("v0001", reason="initial")
    state = registry.serving_state()
    assert state is not None and state["version"] == "v0001" and state["previous"] is None and state["reason"] == "initial"
    assert state["artifact_path"] == "versions/v0001/classifier"
    assert registry.root / state["artifact_path"] == registry.artifact_path("v0001")
    assert state["manifest_sha256"] == first.manifest_sha256 and state["promoted_at"]

    assert registry.promote("v0002").version == "v0002"
    assert registry.serving_state()["previous"] == "v0001"
    assert registry.promote("v0002").version == "v0002"  # re-promoting the served version changes nothing
    assert registry.rollback(reason="worse").version == "v0001"
    assert registry.serving() == first
    with pytest.raises(NoRollbackTargetError, match="first served version"):
        registry.rollback()
    assert [(e["action"], e["version"], e["reason"]) for e in registry.history()] == [
        ("promote", "v0001", "initial"),
        ("promote", "v0002", ""),
        ("rollback", "v0001", "worse"),
    ]


def test_tampered_versions_are_refused(tmp_path: Path, variant_a: Path) -> None:
    registry = ClassifierRegistry(tmp_path / "registry")
    for _ in range(3):
        registry.add(variant_a, categories=CATEGORIES, source="test")
    registry.promote("v0001")

    head = registry.artifact_path("v0002") / "head.npz"
    head.write_bytes(head.read_bytes()[:-8] + b"\x00" * 8)
    with pytest.raises(ArtifactIntegrityError, match="v0002"):
        registry.get("v0002")
    assert registry.get("v0002", verify=False).version == "v0002"
    with pytest.raises(ArtifactIntegrityError):
        registry.promote("v0002")

    # An edited manifest is caught even with its own digest recomputed: the registry recorded the old one.
    manifest_file = registry.artifact_path("v0003") / "manifest.json"
    manifest = json.loads(manifest_file.read_text())
    manifest["threshold"] = 0.99
    manifest[MANIFEST_DIGEST_KEY] = manifest_digest(manifest)
    manifest_file.write_text(json.dumps(manifest))
    with pytest.raises(ArtifactIntegrityError, match="v0003"):
        registry.promote("v0003")
    assert registry.serving_state()["version"] == "v0001"


def test_add_refuses_what_is_not_a_sound_artifact_and_leaves_nothing(tmp_path: Path, variant_a: Path) -> None:
    registry = ClassifierRegistry(tmp_path / "registry")
    (tmp_path / "empty").mkdir()
    with pytest.raises(ArtifactError, match="no artifact"):
        registry.add(tmp_path / "empty", categories=CATEGORIES, source="test")
    with pytest.raises(ArtifactError, match="categories"):
        registry.add(variant_a, categories=[], source="test")

    broken = copy_of(variant_a, tmp_path / "broken")
    (broken / "head.npz").write_bytes(b"not a head")
    with pytest.raises(ArtifactIntegrityError, match="checksum"):
        registry.add(broken, categories=CATEGORIES, source="test", move=True)
    assert (broken / "head.npz").read_bytes() == b"not a head"  # a refused move gives the artifact back
    assert registry.versions() == [] and list(registry.versions_dir.iterdir()) == []


def test_concurrent_adds_get_two_versions(tmp_path: Path, variant_a: Path) -> None:
    registry = ClassifierRegistry(tmp_path / "registry")
    start = threading.Barrier(2)
    results: dict[int, str] = {}
    errors: list[BaseException] = []

    def add(i: int) -> None:
        try:
            start.wait()
            # Two registry objects, as two processes would have.
            results[i] = ClassifierRegistry(registry.root).add(variant_a, categories=CATEGORIES, source=f"writer {i}").version
        except BaseException as err:
            errors.append(err)

    threads = [threading.Thread(target=add, args=(i,)) for i in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == []
    assert sorted(results.values()) == ["v0001", "v0002"]
    assert sorted(v.source for v in registry.versions()) == ["writer 0", "writer 1"]
    for version in ("v0001", "v0002"):
        registry.get(version)  # both complete and intact
