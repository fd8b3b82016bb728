"""The log pool: an incremental dataset build gives the full build's snapshot, reading only what is new.

Real components: SQLite traffic logs written with TrafficLog (and PostgreSQL when
``ROUTER_TEST_POSTGRES_URL`` names a server), Bitext rows as the logged cloud answers, the real
cleaning filters and degeneration guard (observed, not replaced, where a test counts its calls).
"""

from __future__ import annotations

import itertools
import json
import logging
import os
import random
from collections.abc import Iterable
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest

import finetune.datasets
from finetune.datasets import (
    DatasetFilters,
    DatasetSnapshot,
    Example,
    build_snapshot,
    clean,
    examples_from_csv,
    iter_examples_from_log,
)
from finetune.log_pool import LogPool, PoolUpdate
from hybrid_common.guard import DegenerationGuard
from router.traffic_log import LogRecord, TrafficLog
from tests.conftest import BITEXT_CSV

FILTERS = DatasetFilters(min_eval_per_category=3, max_eval_per_category=4, max_eval_examples=4)


@pytest.fixture(scope="module")
def bitext() -> list[Example]:
    """Bitext rows with distinct prompts that pass the default filters, in file order."""
    if not BITEXT_CSV.is_file():
        pytest.fail(f"Bitext dataset missing at {BITEXT_CSV}")
    rows = examples_from_csv(BITEXT_CSV, query_column="instruction", answer_column="response", category_column="category")
    kept, _ = clean(rows[:400], DatasetFilters(near_duplicate_threshold=1.0))
    assert len(kept) >= 300
    return kept


def _record(i: int, example: Example, **overrides: Any) -> LogRecord:
    fields: dict[str, Any] = {
        "id": f"req-{i}", "requested_model": "auto", "reason": "category_not_local", "stream": False, "tier": "cloud",
        "category": example.category, "messages": list(example.messages), "response": example.answer, "finish_reason": "stop",
    }  # fmt: skip
    fields.update(overrides)
    return LogRecord(**fields)


def _traffic(bitext: list[Example], start: int, count: int) -> list[LogRecord]:
    """``count`` rows with ids from ``start``: mostly new prompts, with what a real log holds besides
    (a prompt asked again with another answer, a too short answer, an unreviewed local answer)."""
    records = []
    for i in range(start, start + count):
        example = bitext[i]
        if i % 10 == 3:  # asked again: the first row of a prompt wins
            records.append(_record(i, bitext[i - 2], response=f"Another answer to the same question, number {i}."))
        elif i % 10 == 6:
            records.append(_record(i, example, response="Too short."))
        elif i % 10 == 8:
            records.append(_record(i, example, tier="local"))
        else:
            records.append(_record(i, example))
    return records


def _append(location: str | Path, records: Iterable[LogRecord]) -> None:
    with TrafficLog(location, spool=False) as log:
        for record in records:
            assert log.record(record)


def _full_build(location: str | Path, root: Path, extra: Iterable[Example] = (), **filters: Any) -> DatasetSnapshot:
    """What a retrain built before the pool: the whole log read and cleaned, then the extra sources."""
    chosen = FILTERS.model_copy(update=filters)
    return build_snapshot(itertools.chain(iter_examples_from_log(location), extra), root, filters=chosen)


def _pool_build(
    location: str | Path, root: Path, extra: Iterable[Example] = (), *, max_examples: int = 100_000, **filters: Any
) -> tuple[DatasetSnapshot, PoolUpdate, LogPool]:
    """What a retrain builds now: the pool brought up to date (a fresh object: it is read from disk)."""
    chosen = FILTERS.model_copy(update=filters)
    pool = LogPool(root, location, filters=chosen, max_examples=max_examples)
    update = pool.update()
    snapshot = build_snapshot(extra, root, filters=chosen, cleaned=pool.examples(), cleaned_dropped=pool.dropped)
    return snapshot, update, pool


def _cleaned(location: str | Path) -> list[Example]:
    """What cleaning the whole log keeps before the near-duplicate pass: what the pool should hold."""
    return clean(iter_examples_from_log(location), FILTERS.model_copy(update={"near_duplicate_threshold": 1.0}))[0]


def _answers(snapshot: DatasetSnapshot) -> dict[str, str]:
    return {e.source: e.answer for e in [*snapshot.train, *snapshot.eval]}


@pytest.fixture
def guard_calls(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """The questions the real degeneration guard is asked to judge an answer for."""
    calls: list[str] = []

    class Observed(DegenerationGuard):
        def __init__(self, *args: Any, question: str = "", **kwargs: Any) -> None:
            calls.append(question)
            super().__init__(*args, question=question, **kwargs)

    monkeypatch.setattr(finetune.datasets, "DegenerationGuard", Observed)
    return calls


# ---------------------------------------------------------------------------- incremental = full


def _incremental_equals_full(location: str | Path, tmp_path: Path, bitext: list[Example]) -> None:
    extra = [Example(({"role": "user", "content": bitext[0].query},), "A file's answer to a prompt the log has already.", None, "file:1"),
             Example(({"role": "user", "content": "How do I reset my password for the customer portal?"},),
                     "Open the portal, choose 'Forgot password' and follow the link we e-mail you.", None, "file:2")]  # fmt: skip
    _append(location, _traffic(bitext, 0, 200))
    pooled, first, pool = _pool_build(location, tmp_path / "pooled", extra)
    full = _full_build(location, tmp_path / "full", extra)
    assert first.full_read and first.rows_read == 200 and first.after_rowid == 0
    assert pooled.id == full.id and len(pooled.train) > 100 and len(pooled.eval) > 0
    assert _answers(pooled)["log:req-0"] == bitext[0].answer and "file:1" not in _answers(pooled)  # the log's row wins
    assert pooled.manifest["counts"]["input_precleaned"] == len(pool) and pooled.manifest["dropped"]["duplicate"] >= 20

    _append(location, _traffic(bitext, 200, 60))
    pooled, second, pool = _pool_build(location, tmp_path / "pooled", extra)
    full = _full_build(location, tmp_path / "full", extra)
    assert not second.full_read and second.after_rowid == 200
    assert second.rows_read == 60  # only the new rows were read
    assert pooled.id == full.id and "log:req-259" in _answers(pooled)
    assert pool.dropped == {"duplicate": 26, "answer_too_short": 26}  # 20 + 6 of each in 260 rows, counted once

    again = LogPool(tmp_path / "pooled", location, filters=FILTERS).update()
    assert again.rows_read == 0 and again.pool_size == len(pool) and not again.full_read


def test_an_incremental_build_gives_the_snapshot_of_a_full_build(tmp_path: Path, bitext: list[Example]) -> None:
    _incremental_equals_full(tmp_path / "log.sqlite3", tmp_path, bitext)


def test_an_update_reads_and_judges_only_the_new_rows(tmp_path: Path, bitext: list[Example], guard_calls: list[str]) -> None:
    log = tmp_path / "log.sqlite3"
    _append(log, _traffic(bitext, 0, 100))
    pool = LogPool(tmp_path / "registry", log, filters=FILTERS)
    assert pool.update().rows_read == 100
    assert len(guard_calls) == 70  # 100 rows - 10 duplicates, 10 too short, 10 local
    guard_calls.clear()
    _append(log, _traffic(bitext, 100, 20))
    update = LogPool(tmp_path / "registry", log, filters=FILTERS).update()
    assert (update.after_rowid, update.rows_read, update.admitted, update.full_read) == (100, 20, 14, False)
    assert guard_calls == [bitext[i].query for i in range(100, 120) if i % 10 not in (3, 6, 8)]


# ---------------------------------------------------------------------------- feedback


def _feedback_on_old_rows(location: str | Path, tmp_path: Path, bitext: list[Example]) -> None:
    _append(location, _traffic(bitext, 0, 120))
    pooled, _, _ = _pool_build(location, tmp_path / "pooled")
    full = _full_build(location, tmp_path / "full")
    assert pooled.id == full.id
    # Two rows no later row repeats the prompt of (a later duplicate would take a rejected row's place
    # in a full read, which the pool, having dropped it, cannot: see the module docstring).
    unrepeated = [e.source.removeprefix("log:") for e in pooled.train if int(e.source.split("-")[1]) % 10 != 1]
    corrected, rejected = unrepeated[:2]
    answer = "A reviewer's corrected answer, long enough to pass the length filter."
    with TrafficLog(location, spool=False) as log:
        log.record_feedback(corrected, score=None, accepted=None, correction=answer)
        log.record_feedback(rejected, score=None, accepted=False, correction=None)
        log.record_feedback("req-8", score=None, accepted=True, correction=None)  # local, but include_local is off
    _append(location, _traffic(bitext, 120, 10))

    pooled, update, pool = _pool_build(location, tmp_path / "pooled")
    answers = _answers(pooled)
    assert update.feedback_rows == 3 and update.rows_read == 10
    assert answers[f"log:{corrected}:correction"] == answer and f"log:{corrected}" not in answers
    assert not any(source.startswith(f"log:{rejected}") for source in answers)
    assert update.removed_by_feedback == 1
    assert pooled.id == _full_build(location, tmp_path / "full").id  # no later row repeats these prompts
    # A second update has no new feedback: nothing is re-derived.
    assert LogPool(tmp_path / "pooled", location, filters=FILTERS).update().feedback_rows == 0


def test_feedback_on_an_old_row_corrects_or_removes_it(tmp_path: Path, bitext: list[Example]) -> None:
    _feedback_on_old_rows(tmp_path / "log.sqlite3", tmp_path, bitext)


def test_feedback_makes_an_earlier_row_win_its_prompt_back(tmp_path: Path, bitext: list[Example]) -> None:
    """A row first left out (an error) that feedback corrects precedes the row kept for its prompt."""
    log = tmp_path / "log.sqlite3"
    _append(log, [_record(0, bitext[0], error_type="APITimeoutError"), _record(1, bitext[0]), _record(2, bitext[1])])
    pool = LogPool(tmp_path / "registry", log, filters=FILTERS)
    pool.update()
    assert [e.source for e in pool.examples()] == ["log:req-1", "log:req-2"]
    with TrafficLog(log, spool=False) as opened:
        opened.record_feedback("req-0", score=None, accepted=None, correction="The answer a reviewer wrote for this question.")
    pool = LogPool(tmp_path / "registry", log, filters=FILTERS)
    pool.update()
    assert [e.source for e in pool.examples()] == ["log:req-0:correction", "log:req-2"]
    assert pool.examples() == _cleaned(log)
    # Feedback on both rows of a prompt, rejecting the first: the second, left out so far, takes its place.
    with TrafficLog(log, spool=False) as opened:
        opened.record_feedback("req-1", score=0.5, accepted=None, correction=None)
        opened.record_feedback("req-0", score=None, accepted=False, correction=None)
    pool = LogPool(tmp_path / "registry", log, filters=FILTERS)
    assert pool.update().feedback_rows == 2
    assert [e.source for e in pool.examples()] == ["log:req-1", "log:req-2"] and pool.examples() == _cleaned(log)


# ---------------------------------------------------------------------------- retention


def test_rows_deleted_by_retention_leave_the_pool(tmp_path: Path, bitext: list[Example]) -> None:
    log = tmp_path / "log.sqlite3"
    old = (datetime.now(UTC) - timedelta(days=40)).isoformat(timespec="milliseconds")
    records = _traffic(bitext, 0, 100)
    for record in records[:30]:
        record.created_at = old
    _append(log, records)
    pool = LogPool(tmp_path / "registry", log, filters=FILTERS)
    pool.update()
    before = {e.source for e in pool.examples()}
    with TrafficLog(log, spool=False) as opened:
        assert opened.prune(30) == 30
    update = LogPool(tmp_path / "registry", log, filters=FILTERS).update()
    pool = LogPool(tmp_path / "registry", log, filters=FILTERS)
    pool.update()
    after = {e.source for e in pool.examples()}
    gone = {s for s in before if int(s.split("-")[1]) < 30}
    assert len(gone) == 21 and update.removed_by_retention == 21 and update.rows_read == 0
    assert after == before - gone
    assert pool.examples() == _cleaned(log)


def test_a_log_whose_row_ids_restarted_is_read_again(tmp_path: Path, bitext: list[Example], caplog: pytest.LogCaptureFixture) -> None:
    """SQLite gives row ids again once every row is gone: the cursor must not skip the new rows."""
    log = tmp_path / "log.sqlite3"
    old = (datetime.now(UTC) - timedelta(days=40)).isoformat(timespec="milliseconds")
    _append(log, [_record(i, bitext[i], created_at=old) for i in range(5)])
    LogPool(tmp_path / "registry", log, filters=FILTERS).update()
    with TrafficLog(log, spool=False) as opened:
        opened.prune(30)
    _append(log, [_record(i, bitext[i]) for i in range(10, 13)])
    with caplog.at_level(logging.WARNING, logger="finetune.log_pool"):
        pool = LogPool(tmp_path / "registry", log, filters=FILTERS)
        update = pool.update()
    assert update.full_read and "rewritten" in caplog.text
    assert [e.source for e in pool.examples()] == ["log:req-10", "log:req-11", "log:req-12"]


# ---------------------------------------------------------------------------- the cap


def test_the_cap_keeps_the_smallest_hashes_whatever_the_order_and_judges_nothing_over_it(
    tmp_path: Path, bitext: list[Example], guard_calls: list[str]
) -> None:
    chosen = bitext[:60]
    by_key = sorted(chosen, key=lambda e: e.prompt_key)
    expected = {e.prompt_key for e in by_key[:20]}
    shuffled = list(chosen)
    random.Random(7).shuffle(shuffled)
    pools = {}
    for name, order in (("ascending", by_key), ("descending", by_key[::-1]), ("shuffled", shuffled)):
        log = tmp_path / f"{name}.sqlite3"
        _append(log, [_record(i, e) for i, e in enumerate(order)])
        guard_calls.clear()
        pool = LogPool(tmp_path / name, log, filters=FILTERS, max_examples=20)
        pool.update()
        pools[name] = pool
        assert {e.prompt_key for e in pool.examples()} == expected and len(pool) == 20
        assert pool.dropped == {"over_pool_cap": 40}
        if name == "ascending":  # once full, every later prompt hashes above the sample: never judged
            assert guard_calls == [e.query for e in by_key[:20]]
        if name == "descending":  # each prompt enters the sample and evicts the largest
            assert len(guard_calls) == 60
    # Saved and read back, the same sample; new rows above it are not judged either.
    log = tmp_path / "ascending.sqlite3"
    _append(log, [_record(100 + i, e) for i, e in enumerate(bitext[60:90])])
    guard_calls.clear()
    pool = LogPool(tmp_path / "ascending", log, filters=FILTERS, max_examples=20)
    update = pool.update()
    newcomers = sorted(bitext[:90], key=lambda e: e.prompt_key)[:20]
    assert update.rows_read == 30 and len(pool) == 20
    assert {e.prompt_key for e in pool.examples()} == {e.prompt_key for e in newcomers}
    sample, judged = sorted(expected), []
    for e in bitext[60:90]:  # judged only when below the sample's largest hash at its arrival
        if e.prompt_key < sample[-1]:
            judged.append(e.query)
            sample = sorted([*sample, e.prompt_key])[:20]
    assert guard_calls == judged and 0 < len(judged) < 30


def test_a_capped_pool_and_a_changed_cap_are_different_pools(tmp_path: Path) -> None:
    log = tmp_path / "log.sqlite3"
    assert LogPool(tmp_path, log, max_examples=10).path != LogPool(tmp_path, log, max_examples=20).path


# ---------------------------------------------------------------------------- damage and settings


def _edit_an_answer(directory: Path) -> None:
    path = directory / "pool.jsonl"
    lines = path.read_text(encoding="utf-8").splitlines(keepends=True)
    entry = json.loads(lines[3])
    entry["example"]["answer"] += " (edited by hand)"
    lines[3] = json.dumps(entry, sort_keys=True) + "\n"
    path.write_text("".join(lines), encoding="utf-8")


@pytest.mark.parametrize(
    ("damage", "expected"),
    [
        (_edit_an_answer, "does not match the checksum"),
        (lambda d: (d / "pool.jsonl").unlink(), "unreadable"),
        (lambda d: (d / "pool.jsonl").write_text("{not json\n", encoding="utf-8"), "unreadable"),
        (lambda d: (d / "state.json").write_text("[]", encoding="utf-8"), "unreadable"),
    ],
    ids=["edited", "missing", "not-json", "bad-state"],
)
def test_a_damaged_pool_is_rebuilt_with_a_warning(
    tmp_path: Path, bitext: list[Example], caplog: pytest.LogCaptureFixture, damage: Any, expected: str
) -> None:
    log = tmp_path / "log.sqlite3"
    _append(log, _traffic(bitext, 0, 80))
    first, _, pool = _pool_build(log, tmp_path / "registry")
    damage(pool.path)
    with caplog.at_level(logging.WARNING, logger="finetune.log_pool"):
        again, update, _ = _pool_build(log, tmp_path / "registry")
    assert update.full_read and update.rows_read == 80 and again.id == first.id
    assert expected in caplog.text and "reading the whole log" in caplog.text
    assert LogPool(tmp_path / "registry", log, filters=FILTERS).update().rows_read == 0  # whole again


def test_an_interrupted_save_is_finished_or_dropped(tmp_path: Path, bitext: list[Example]) -> None:
    log = tmp_path / "log.sqlite3"
    _append(log, _traffic(bitext, 0, 40))
    pool = LogPool(tmp_path / "registry", log, filters=FILTERS)
    pool.update()
    data = pool.path / "pool.jsonl"
    (pool.path / "pool.jsonl.next").write_text("left over by a crash before the state was written\n")
    again = LogPool(tmp_path / "registry", log, filters=FILTERS)
    assert again.update().rows_read == 0 and not (pool.path / "pool.jsonl.next").exists()
    # A crash after the state named the new file, before the rename: the rename is finished.
    os.replace(data, data.with_name("pool.jsonl.next"))
    again = LogPool(tmp_path / "registry", log, filters=FILTERS)
    assert again.update().rows_read == 0 and data.is_file() and again.examples() == pool.examples()


def test_changed_cleaning_settings_start_a_fresh_pool(tmp_path: Path, bitext: list[Example]) -> None:
    log = tmp_path / "log.sqlite3"
    _append(log, _traffic(bitext, 0, 50))
    _, first, pool = _pool_build(log, tmp_path / "registry")
    _, changed, other = _pool_build(log, tmp_path / "registry", min_answer_chars=5)
    assert other.path != pool.path and changed.full_read and changed.rows_read == 50
    assert "log:req-6" in {e.source for e in other.examples()}  # "Too short." passes 5 characters
    assert not pool.path.exists()  # the earlier settings' pool is not kept
    # Split and near-duplicate settings apply when the snapshot is built: the pool stays.
    _, same, kept = _pool_build(log, tmp_path / "registry", min_answer_chars=5, eval_percent=20, near_duplicate_threshold=0.8)
    assert kept.path == other.path and same.rows_read == 0 and not same.full_read
    assert LogPool(tmp_path / "registry", log, filters=FILTERS, categories=["ORDER"]).path != pool.path
    assert LogPool(tmp_path / "registry", log, filters=FILTERS, include_local=True).path != pool.path
    assert LogPool(tmp_path / "registry", tmp_path / "other.sqlite3", filters=FILTERS).path != pool.path


def test_full_discards_the_pool(tmp_path: Path, bitext: list[Example], caplog: pytest.LogCaptureFixture) -> None:
    log = tmp_path / "log.sqlite3"
    _append(log, _traffic(bitext, 0, 30))
    LogPool(tmp_path / "registry", log, filters=FILTERS).update()
    with caplog.at_level(logging.WARNING, logger="finetune.log_pool"):
        update = LogPool(tmp_path / "registry", log, filters=FILTERS).update(full=True)
    assert update.full_read and update.rows_read == 30 and caplog.text == ""  # asked for: not a warning


# ---------------------------------------------------------------------------- PostgreSQL


@pytest.mark.slow
def test_incremental_equals_full_on_postgresql(pg_url: str, tmp_path: Path, bitext: list[Example]) -> None:
    _incremental_equals_full(pg_url, tmp_path, bitext)
    pool = LogPool(tmp_path / "pooled", pg_url, filters=FILTERS)
    assert pool.identity["log"] == pg_url  # no password in this URL; masked_url would hide one


@pytest.mark.slow
def test_feedback_on_an_old_row_on_postgresql(pg_url: str, tmp_path: Path, bitext: list[Example]) -> None:
    _feedback_on_old_rows(pg_url, tmp_path, bitext)


def test_the_pool_state_names_its_settings_and_cursor(tmp_path: Path, bitext: list[Example]) -> None:
    log = tmp_path / "log.sqlite3"
    _append(log, _traffic(bitext, 0, 12))
    pool = LogPool(tmp_path / "registry", log, filters=FILTERS)
    pool.update()
    state = json.loads((pool.path / "state.json").read_text())
    assert state["cursor"] == {"rowid": 12, "request_id": "req-11", "feedback_id": 0}
    assert state["count"] == len(pool) == 9 and state["identity"]["log"] == str(log.resolve())
    lines = (pool.path / "pool.jsonl").read_text().splitlines()
    assert [json.loads(line)["rowid"] for line in lines] == [1, 2, 3, 5, 6, 8, 10, 11, 12]


def test_rows_logged_without_a_category_are_labelled_and_the_classifier_is_in_the_fingerprint(
    tmp_path: Path, bitext: list[Example], classifier_path: Path
) -> None:
    from classifiers import EmbeddingClassifier
    from tests.finetune.conftest import write_classifier_variant

    log = tmp_path / "log.sqlite3"
    _append(log, [_record(i, bitext[i], category=None) for i in range(40)])
    pool = LogPool(tmp_path / "registry", log, filters=FILTERS, label_with=classifier_path)
    pool.update()
    predict = EmbeddingClassifier.load(classifier_path).predict
    cleaned = clean(iter_examples_from_log(log, label_unlabelled=predict), FILTERS.model_copy(update={"near_duplicate_threshold": 1.0}))[0]
    assert pool.examples() == cleaned and any(e.category is not None for e in cleaned)
    assert pool.identity["label_with_manifest"]
    variant = write_classifier_variant(classifier_path, tmp_path / "variant", prefix="v2-")
    relabelled = LogPool(tmp_path / "registry", log, filters=FILTERS, label_with=variant)
    assert relabelled.path != pool.path and relabelled.update().full_read
    assert len(relabelled) == len(pool) and all(e.category.startswith("v2-") for e in relabelled.examples())
