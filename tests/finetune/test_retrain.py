"""One retrain cycle from a real traffic log: no-op paths, and a real (tiny) candidate the gate refuses."""

from __future__ import annotations

from pathlib import Path

import pytest

from finetune.config import RetrainConfig
from finetune.datasets import examples_from_csv
from finetune.registry import BASE_VERSION, ModelRegistry
from finetune.retrain import retrain
from router.traffic_log import LogRecord, TrafficLog
from tests.conftest import BITEXT_CSV


def _log(path: Path, count: int) -> Path:
    if not BITEXT_CSV.is_file():
        pytest.fail(f"Bitext dataset missing at {BITEXT_CSV}")
    rows = examples_from_csv(BITEXT_CSV, query_column="instruction", answer_column="response", category_column="category")
    rows = [r for r in rows if r.category == "ORDER"][:count]
    with TrafficLog(path) as log:
        for i, row in enumerate(rows):
            log.record(
                LogRecord(
                    id=f"req-{i}", requested_model="gpt-4o", reason="category_not_local", stream=False, tier="cloud",
                    category="ORDER", messages=list(row.messages), response=row.answer, finish_reason="stop",
                )  # fmt: skip
            )
    return path


def _config(tmp_path: Path, log: Path, **overrides: object) -> RetrainConfig:
    return RetrainConfig.model_validate(
        {
            "log_path": log,
            "registry_path": tmp_path / "registry",
            "categories": ["ORDER"],
            "filters": {"min_eval_per_category": 3, "max_eval_per_category": 3},
            **overrides,
        }
    )


def test_too_little_new_data_changes_nothing(tmp_path: Path) -> None:
    config = _config(tmp_path, _log(tmp_path / "log.sqlite3", 20), min_new_examples=500)
    first = retrain(config, progress=False, log=lambda _: None)
    assert first.status == "skipped" and "new training examples" in first.message
    registry = ModelRegistry(config.registry_path)
    # Nothing registered, nothing promoted: a router following this registry serves what it served before.
    assert registry.versions() == [] and registry.serving() is None and registry.history() == []
    again = retrain(config, progress=False, log=lambda _: None)
    assert again.status == "skipped" and registry.versions() == [] and registry.serving() is None


def test_dry_run_writes_no_version(tmp_path: Path) -> None:
    config = _config(tmp_path, _log(tmp_path / "log.sqlite3", 80), min_new_examples=5)
    result = retrain(config, progress=False, dry_run=True, log=lambda _: None)
    assert result.status == "skipped" and result.message.startswith("dry run"), result.message
    assert ModelRegistry(config.registry_path).serving() is None


def test_no_category_with_a_frozen_block_means_nothing_to_measure(tmp_path: Path) -> None:
    config = _config(tmp_path, _log(tmp_path / "log.sqlite3", 80), min_new_examples=5, filters={"min_eval_per_category": 500})
    result = retrain(config, progress=False, log=lambda _: None)
    assert result.status == "skipped" and "no frozen evaluation examples" in result.message
    assert ModelRegistry(config.registry_path).versions() == []


def test_missing_log_is_a_clear_error(tmp_path: Path) -> None:
    from router.errors import ConfigError

    with pytest.raises(ConfigError, match="no traffic log"):
        retrain(_config(tmp_path, tmp_path / "absent.sqlite3"), progress=False, log=lambda _: None)


@pytest.mark.slow
def test_a_candidate_that_does_not_win_is_kept_but_not_promoted(tmp_path: Path) -> None:
    """Two optimizer steps cannot beat the base by the margin the gate asks: the cycle runs for
    real (snapshot, training, export, evaluation as served) and the base keeps serving."""
    config = _config(
        tmp_path, _log(tmp_path / "log.sqlite3", 120), min_new_examples=5,
        training={"max_steps": 2, "batch_size": 2, "validation_examples": 0, "lora_r": 4},
        evaluation={"n_threads": 2},
        serving={"default_max_tokens": 12},
        gate={"min_improvement": 0.5},
    )  # fmt: skip
    result = retrain(config, progress=False, log=lambda _: None)
    registry = ModelRegistry(config.registry_path)
    assert result.status == "rejected", result.message
    assert result.decision is not None and not result.decision.promote
    assert registry.serving() is None  # nothing promoted: the base model keeps serving
    assert registry.get(BASE_VERSION).metrics["examples"] == 3.0  # measured, not promoted
    candidate = registry.get(result.version)  # kept, with its metrics and a verified checksum
    assert candidate.metrics["examples"] == 3.0 and candidate.dataset_id == result.dataset_id
    # Same data again: already trained on this snapshot, nothing to do.
    assert retrain(config, progress=False, log=lambda _: None).status == "skipped"


def test_a_second_retrain_reads_only_new_rows_and_full_reads_them_all(tmp_path: Path) -> None:
    log_path = _log(tmp_path / "log.sqlite3", 60)
    config = _config(tmp_path, log_path, min_new_examples=5)
    lines: list[str] = []
    first = retrain(config, progress=False, dry_run=True, log=lines.append)
    assert lines[0].startswith("log: whole log read, 60 rows (pool ")
    lines.clear()
    with TrafficLog(log_path) as log:  # feedback on an old row: that row alone is read again
        log.record_feedback("req-3", score=None, accepted=None, correction="A reviewer's answer to this order question.")
    second = retrain(config, progress=False, dry_run=True, log=lines.append)
    assert lines[0].startswith("log: 0 new rows since rowid 60, 1 older rows read again for new feedback (pool ")
    assert second.dataset_id != first.dataset_id
    lines.clear()
    third = retrain(config, progress=False, dry_run=True, full=True, log=lines.append)
    assert lines[0].startswith("log: whole log read, 60 rows (pool ") and third.dataset_id == second.dataset_id
