"""Discovery over a real traffic log: proposals stay stable across runs and edits carry through.

The log holds Bitext queries answered by the "cloud" with Bitext's reference answers, as an
all-cloud deployment logs them; the encoder is the session classifier's (untuned MiniLM, ONNX).
"""

from __future__ import annotations

import random
import uuid
from collections import Counter
from pathlib import Path

import pytest

from classifiers.discovery import ProposalError, ProposalStore, set_status
from finetune.categories import merge, rename
from finetune.discovery import discover
from router.traffic_log import LogRecord, TrafficLog
from tests.conftest import bitext_rows

CATEGORIES = ["REFUND", "SHIPPING", "NEWSLETTER", "CONTACT"]


def write_log(path: Path, rows: list[dict[str, str]], *, private_from: int | None = None) -> dict[str, str]:
    """Log ``rows`` as cloud answers; returns request id -> Bitext category (for checking only)."""
    truth = {}
    with TrafficLog(path) as log:
        for i, row in enumerate(rows):
            request_id = f"chatcmpl-{uuid.uuid4().hex}"
            private = private_from is not None and i >= private_from
            log.record(LogRecord(
                id=request_id, requested_model="gpt-4o", reason="pii_match" if private else "no_classifier", stream=False,
                tier="local" if private else "cloud", messages=[{"role": "user", "content": row["instruction"]}],
                response=row["response"], finish_reason="stop",
            ))  # fmt: skip
            truth[request_id] = row["category"]
    return truth


@pytest.fixture(scope="module")
def rows() -> list[dict[str, str]]:
    picked = [r for r in bitext_rows() if r["category"] in CATEGORIES]
    random.Random(0).shuffle(picked)
    by_category: dict[str, list[dict[str, str]]] = {c: [] for c in CATEGORIES}
    for r in picked:
        if len(by_category[r["category"]]) < 150:
            by_category[r["category"]].append(r)
    out = [r for rs in by_category.values() for r in rs]
    random.Random(1).shuffle(out)
    return out


def _purity(store: ProposalStore, truth: dict[str, str]) -> dict[str, float]:
    vectors = store.load_vectors()
    out = {}
    for index, category_id in enumerate(vectors["ids"]):
        labels = [truth[r] for r, m in zip(vectors["request_ids"], vectors["members"], strict=True) if m == index]
        if labels:
            out[category_id] = Counter(labels).most_common(1)[0][1] / len(labels)
    return out


def test_discover_proposes_pure_categories_and_a_rerun_changes_nothing(rows, classifier_path: Path, tmp_path: Path) -> None:
    log = tmp_path / "traffic.sqlite3"
    truth = write_log(log, rows)
    store_dir = tmp_path / "categories"
    first = discover(log, store_dir, classifier_path=classifier_path, progress=False)
    proposed = [c for c in first.proposal.categories if c.proposed]
    assert proposed and sum(c.share for c in proposed) >= 0.8
    purity = _purity(first.store, truth)
    assert min(purity[c.id] for c in proposed) >= 0.95
    assert all(c.answer_similarity is not None for c in proposed)
    assert (store_dir / "report.html").read_text().count("<tr class=") == len(first.proposal.categories)

    again = discover(log, store_dir, classifier_path=classifier_path, progress=False)
    assert [(c.id, c.name, c.size) for c in again.proposal.categories] == [(c.id, c.name, c.size) for c in first.proposal.categories]


def test_accepted_categories_keep_their_names_and_new_traffic_joins_them(rows, classifier_path: Path, tmp_path: Path) -> None:
    log = tmp_path / "traffic.sqlite3"
    write_log(log, rows[:400])
    store_dir = tmp_path / "categories"
    run = discover(log, store_dir, classifier_path=classifier_path, progress=False, auto=True)
    accepted = {c.id: c for c in run.proposal.accepted}
    assert accepted
    biggest = max(accepted.values(), key=lambda c: c.size)
    rename(run.store, biggest.name, "MY_NAME")
    rejected = next(c for c in run.proposal.categories if c.status == "proposed")
    run.store.edit(lambda proposal, vectors: set_status(proposal, [rejected.name], "rejected"))

    write_log(log, rows[400:])  # more of the same traffic arrives
    later = discover(log, store_dir, classifier_path=classifier_path, progress=False)
    by_id = {c.id: c for c in later.proposal.categories}
    assert by_id[biggest.id].name == "MY_NAME" and by_id[biggest.id].status == "accepted"
    assert by_id[biggest.id].size > biggest.size  # new queries matched to it first
    assert all(by_id[i].status == "accepted" for i in accepted)
    if rejected.id in by_id:  # the same cluster found again stays rejected
        assert by_id[rejected.id].status == "rejected"


def test_merge_keeps_the_first_id_and_both_names(rows, classifier_path: Path, tmp_path: Path) -> None:
    log = tmp_path / "traffic.sqlite3"
    write_log(log, rows[:300])
    run = discover(log, tmp_path / "categories", classifier_path=classifier_path, progress=False)
    a, b = run.proposal.categories[:2]
    merged = merge(run.store, [a.name, b.name], into="BOTH")
    both = merged.find("BOTH")
    assert both.id == a.id and both.size == a.size + b.size
    assert {a.name, b.name} <= set(both.aliases) and b.id in both.merged_from
    assert merged.find(b.name).id == a.id  # the old name still finds it
    vectors = run.store.load_vectors()
    assert b.id not in vectors["ids"] and int((vectors["members"] == vectors["ids"].index(a.id)).sum()) == both.size
    with pytest.raises(ProposalError, match="no category"):
        rename(run.store, "NOT_THERE", "X")


def test_private_queries_are_flagged_and_redacted_in_examples(rows, classifier_path: Path, tmp_path: Path) -> None:
    log = tmp_path / "traffic.sqlite3"
    leaky = [dict(r, instruction=r["instruction"] + " my email is jane.doe@example.com") for r in rows[:200]]
    write_log(log, leaky, private_from=0)
    run = discover(log, tmp_path / "categories", classifier_path=classifier_path, progress=False, auto=True)
    text = run.store.yaml_path.read_text() + run.store.html_path.read_text()
    assert "jane.doe@example.com" not in text
    assert all(c.pii_share == 1.0 for c in run.proposal.categories)
    assert all(c.private for c in run.proposal.accepted)  # --auto marks PII-heavy categories private


def test_naming_never_sees_private_or_pii_queries(rows, classifier_path: Path, tmp_path: Path) -> None:
    log = tmp_path / "traffic.sqlite3"
    public = [r for r in rows if r["category"] != "NEWSLETTER"][:200]
    private = [dict(r, instruction=r["instruction"] + " (card 4111 1111 1111 1111)") for r in rows if r["category"] == "NEWSLETTER"]
    write_log(log, public + private, private_from=len(public))
    seen: list[str] = []

    def namer(examples: list[str]) -> str:
        seen.extend(examples)
        return "Named by the cloud!"

    run = discover(log, tmp_path / "categories", classifier_path=classifier_path, progress=False, namer=namer)
    assert seen, "the namer was never asked"
    private_texts = {r["instruction"] for r in private}
    assert not set(seen) & private_texts
    assert not any("4111" in s or "newsletter" in s.lower() for s in seen)
    names = [c.name for c in run.proposal.categories]
    assert "NAMED_BY_THE_CLOUD" in names  # made a valid name, and unique:
    assert len(set(names)) == len(names)
    newsletter = [c for c in run.proposal.categories if c.pii_share == 1.0]
    assert newsletter and all(not c.name.startswith("NAMED_BY") for c in newsletter)  # keyword names


def test_the_granularity_flags_reach_the_discovery_settings_and_bad_ones_are_refused() -> None:
    import argparse

    from finetune.categories_cli import _discover_config
    from hybrid_common.errors import ConfigError
    from router import RouterConfig

    config = RouterConfig(discover={"granularity": 0.5})
    assert _discover_config(config).granularity == 0.5
    flags = argparse.Namespace(granularity=2.0, categories=40, target_share=None, min_cluster_share=None, max_queries=None)
    settings = _discover_config(config, flags)
    assert (settings.granularity, settings.categories) == (2.0, 40)
    with pytest.raises(ConfigError, match="discover.granularity"):
        _discover_config(RouterConfig(discover={"granularity": 0}))
