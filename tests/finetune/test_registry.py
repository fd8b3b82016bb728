from __future__ import annotations

import json
import os
import time
from pathlib import Path

import pytest

from finetune.registry import BASE_VERSION, ModelRegistry, ModelVersion, NoRollbackTargetError, file_sha256
from router.errors import ArtifactError, ArtifactIntegrityError, RouterError

METRICS = {"similarity": 0.7, "rouge_l": 0.3, "degenerate_rate": 0.0, "format_valid_rate": 1.0}


@pytest.fixture
def registry(tmp_path: Path) -> ModelRegistry:
    return ModelRegistry(tmp_path / "registry")


def test_add_copies_the_adapter_and_numbers_versions(registry: ModelRegistry, make_adapter) -> None:
    adapter = make_adapter()
    v1 = registry.add(adapter, metrics=METRICS, dataset_id="snap-1", train={"epochs": 1, "rank": 4})
    v2 = registry.add(make_adapter(seed=1), metrics=METRICS)
    assert (v1.version, v2.version) == ("v0001", "v0002")
    copied = registry.versions_dir / "v0001" / "adapter.gguf"
    assert copied.read_bytes() == adapter.read_bytes()
    assert v1.adapter_sha256 == file_sha256(adapter) and v1.adapter_file == "adapter.gguf"
    on_disk = json.loads((registry.versions_dir / "v0001" / "version.json").read_text())
    assert on_disk["dataset_id"] == "snap-1" and on_disk["train"] == {"epochs": 1, "rank": 4}
    assert registry.get("v0001") == v1
    assert registry.adapter_path("v0001") == copied


def test_base_version_is_reserved(registry: ModelRegistry, make_adapter) -> None:
    base = registry.add(None, metrics=METRICS)
    assert base.version == BASE_VERSION and base.adapter_file is None and base.adapter_sha256 is None
    with pytest.raises(ArtifactError, match="already exists"):
        registry.add(None, metrics=METRICS)
    with pytest.raises(ArtifactError, match="reserved"):
        registry.add(make_adapter(), metrics=METRICS, version="base")
    registry.add(make_adapter(), metrics=METRICS)
    assert [v.version for v in registry.versions()] == ["base", "v0001"]


def test_versions_sort_numerically(registry: ModelRegistry, make_adapter) -> None:
    adapter = make_adapter()
    registry.add(adapter, metrics=METRICS, version="v0010")
    registry.add(adapter, metrics=METRICS)  # next after the highest
    registry.add(None, metrics=METRICS)
    assert [v.version for v in registry.versions()] == ["base", "v0010", "v0011"]
    with pytest.raises(ArtifactError, match="already exists"):
        registry.add(adapter, metrics=METRICS, version="v0010")


def test_add_refuses_non_gguf(registry: ModelRegistry, tmp_path: Path) -> None:
    bogus = tmp_path / "adapter.bin"
    bogus.write_bytes(b"not a gguf")
    with pytest.raises(ArtifactError, match="not a GGUF"):
        registry.add(bogus, metrics=METRICS)
    with pytest.raises(ArtifactError, match="not found"):
        registry.add(tmp_path / "missing.gguf", metrics=METRICS)
    assert registry.versions() == []


def test_get_detects_a_corrupt_adapter(registry: ModelRegistry, make_adapter) -> None:
    registry.add(make_adapter(), metrics=METRICS)
    path = registry.adapter_path("v0001")
    with open(path, "r+b") as fh:
        fh.seek(-8, os.SEEK_END)
        fh.write(b"\x00" * 8)
    with pytest.raises(ArtifactIntegrityError, match="sha256"):
        registry.get("v0001")
    assert registry.get("v0001", verify=False).version == "v0001"
    with pytest.raises(ArtifactIntegrityError):
        registry.promote("v0001")
    assert registry.serving() is None
    with pytest.raises(ArtifactError, match="no version 'v0009'.*known: v0001"):
        registry.get("v0009")


def test_update_metrics_merges(registry: ModelRegistry, make_adapter) -> None:
    registry.add(make_adapter(), metrics=METRICS)
    updated = registry.update_metrics("v0001", {"similarity": 0.8, "tokens_per_s": 40})
    assert updated.metrics["similarity"] == 0.8 and updated.metrics["rouge_l"] == 0.3
    assert registry.get("v0001").metrics == updated.metrics
    # Metrics from another evaluation set are replaced, not mixed.
    moved = registry.update_metrics("v0001", {"similarity": 0.6}, eval_set="frozen-2")
    assert moved.metrics == {"similarity": 0.6} and moved.train["eval_set"] == "frozen-2"
    same = registry.update_metrics("v0001", {"rouge_l": 0.2}, eval_set="frozen-2")
    assert same.metrics == {"similarity": 0.6, "rouge_l": 0.2}


def test_ensure_base_registers_once(registry: ModelRegistry) -> None:
    base = registry.ensure_base(base_model="packaged")
    assert base.version == "base" and base.base_model == "packaged" and base.metrics == {}
    assert registry.ensure_base() == base


def test_promote_and_rollback_walk_the_history(registry: ModelRegistry, make_adapter) -> None:
    registry.add(None, metrics=METRICS)
    registry.add(make_adapter(), metrics=METRICS)
    registry.add(make_adapter(seed=1), metrics=METRICS)
    with pytest.raises(NoRollbackTargetError, match="nothing"):
        registry.rollback()

    registry.promote("base", reason="initial")
    state = json.loads(registry.serving_path.read_text())
    assert state["version"] == "base" and state["adapter_path"] is None and state["previous"] is None
    registry.promote("v0001")
    registry.promote("v0002", reason="gate passed")
    state = json.loads(registry.serving_path.read_text())
    assert state["version"] == "v0002" and state["previous"] == "v0001"
    assert state["adapter_path"] == str(registry.adapter_path("v0002")) and Path(state["adapter_path"]).is_absolute()
    assert state["adapter_sha256"] == registry.get("v0002").adapter_sha256
    assert registry.serving() == registry.get("v0002")
    assert registry.promote("v0002").version == "v0002"  # re-promoting the served version changes nothing

    assert registry.rollback().version == "v0001"
    assert json.loads(registry.serving_path.read_text())["previous"] == "base"
    assert registry.rollback().version == "base"
    with pytest.raises(NoRollbackTargetError, match="first served version") as info:
        registry.rollback()
    assert isinstance(info.value, RouterError)
    actions = [(e["action"], e["version"]) for e in registry.history()]
    assert actions == [("promote", "base"), ("promote", "v0001"), ("promote", "v0002"), ("rollback", "v0001"), ("rollback", "base")]


def test_crash_leftovers_are_ignored_and_cleaned(registry: ModelRegistry, make_adapter) -> None:
    registry.add(make_adapter(), metrics=METRICS)
    registry.promote("v0001")
    # A writer that died mid-add leaves a temporary directory; a torn history line; a stray serving temp file.
    leftover = registry.versions_dir / ".tmp-dead"
    leftover.mkdir()
    (leftover / "adapter.gguf").write_bytes(b"GGUF half")
    (registry.root / ".serving.json.abc.tmp").write_text('{"version": "v00')
    with open(registry.history_path, "a") as fh:
        fh.write('{"action": "prom')
    assert [v.version for v in registry.versions()] == ["v0001"]
    assert registry.serving().version == "v0001"
    assert len(registry.history()) == 1
    old = time.time() - 2 * 3600
    os.utime(leftover, (old, old))
    assert registry.add(make_adapter(seed=2), metrics=METRICS).version == "v0002"
    assert not leftover.exists()


def test_failed_add_leaves_nothing(registry: ModelRegistry, make_adapter, monkeypatch: pytest.MonkeyPatch) -> None:
    def crash(*args: object) -> None:
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(os, "rename", crash)
    with pytest.raises(OSError, match="No space"):
        registry.add(make_adapter(), metrics=METRICS, version="v0001")
    monkeypatch.undo()
    assert registry.versions() == [] and list(registry.versions_dir.iterdir()) == []


def test_failed_promote_keeps_serving_json_valid(registry: ModelRegistry, make_adapter, monkeypatch: pytest.MonkeyPatch) -> None:
    registry.add(make_adapter(), metrics=METRICS)
    registry.add(make_adapter(seed=1), metrics=METRICS)
    registry.promote("v0001")

    def crash(*args: object) -> None:
        raise OSError("power cut")

    monkeypatch.setattr(os, "replace", crash)
    with pytest.raises(OSError):
        registry.promote("v0002")
    monkeypatch.undo()
    assert json.loads(registry.serving_path.read_text())["version"] == "v0001"
    assert [p.name for p in registry.root.iterdir() if p.name.endswith(".tmp")] == []


def test_model_version_round_trips() -> None:
    record = ModelVersion(version="v0001", created_at="2026-01-01T00:00:00Z", metrics={"similarity": 0.5})
    assert ModelVersion.model_validate_json(record.model_dump_json()) == record
