"""The saved artifact: round trip, manifest contents, integrity checks, atomic replace."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest

from classifiers import EmbeddingClassifier
from classifiers._artifact import sha256_file
from router.errors import ArtifactError, ArtifactIntegrityError

pytestmark = pytest.mark.slow


def test_round_trip_gives_identical_predictions(fine_tuned, artifact: Path, bitext) -> None:
    loaded = EmbeddingClassifier.load(artifact)
    texts = bitext.holdout.texts
    assert loaded.predict(texts) == fine_tuned.predict(texts)
    np.testing.assert_array_equal(loaded.predict_proba(texts), fine_tuned.predict_proba(texts))
    assert list(loaded.classes_) == list(fine_tuned.classes_)
    assert loaded.threshold_ == fine_tuned.threshold_
    assert loaded.get_params() == fine_tuned.get_params()
    assert loaded.classify(texts[0]) == fine_tuned.classify(texts[0])


def test_manifest_records_identity_and_checksums(fine_tuned, artifact: Path) -> None:
    manifest = json.loads((artifact / "manifest.json").read_text())
    assert manifest["format_version"] == 3
    assert manifest["classes"] == list(fine_tuned.classes_)
    assert manifest["encoder"]["sha256"] == sha256_file(artifact / "encoder" / "model.onnx")
    assert manifest["encoder"]["fine_tuned"] is True and manifest["encoder"]["quantized"] is True
    assert Path(manifest["encoder"]["source"]).is_dir()
    assert set(manifest["files"]) == {"encoder/model.onnx", "encoder/tokenizer.json", "head.npz"}
    for name, digest in manifest["files"].items():
        assert sha256_file(artifact / name) == digest
    assert {"library_version", "created_at", "threshold", "proba_weight", "exemplar_weight", "params"} <= set(manifest)
    assert not list(artifact.parent.glob(".*tmp-*")), "staging directory left behind"


@pytest.fixture
def copy_of(artifact: Path, tmp_path: Path) -> Path:
    target = tmp_path / "copy"
    shutil.copytree(artifact, target)
    return target


@pytest.mark.parametrize("name", ["head.npz", "encoder/model.onnx", "encoder/tokenizer.json"])
def test_tampered_file_is_rejected(copy_of: Path, name: str) -> None:
    file = copy_of / name
    data = bytearray(file.read_bytes())
    data[len(data) // 2] ^= 0xFF
    file.write_bytes(bytes(data))
    with pytest.raises(ArtifactIntegrityError, match="checksum"):
        EmbeddingClassifier.load(copy_of)


def test_edited_manifest_is_rejected(copy_of: Path) -> None:
    manifest = json.loads((copy_of / "manifest.json").read_text())
    manifest["threshold"] = 0.99
    (copy_of / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(ArtifactIntegrityError, match="modified"):
        EmbeddingClassifier.load(copy_of)


def test_other_format_version_is_rejected(copy_of: Path) -> None:
    manifest = json.loads((copy_of / "manifest.json").read_text())
    manifest["format_version"] = 999
    (copy_of / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(ArtifactIntegrityError, match="format version"):
        EmbeddingClassifier.load(copy_of)


def test_missing_file_is_rejected(copy_of: Path) -> None:
    (copy_of / "head.npz").unlink()
    with pytest.raises(ArtifactIntegrityError, match="missing"):
        EmbeddingClassifier.load(copy_of)


def test_save_replaces_an_artifact_but_not_other_data(frozen, tmp_path: Path) -> None:
    target = tmp_path / "model"
    frozen.save(target)
    first = json.loads((target / "manifest.json").read_text())["created_at"]
    (target / "stale.txt").write_text("left by nobody")
    frozen.save(target)
    assert json.loads((target / "manifest.json").read_text())["created_at"] >= first
    assert not (target / "stale.txt").exists()  # replaced whole, not written over
    assert sorted(p.name for p in tmp_path.iterdir()) == ["model"]
    precious = tmp_path / "precious"
    precious.mkdir()
    (precious / "data.txt").write_text("keep me")
    with pytest.raises(ArtifactError):
        frozen.save(precious)
    assert (precious / "data.txt").read_text() == "keep me"
