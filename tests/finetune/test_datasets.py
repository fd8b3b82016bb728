"""Training sets from the traffic log: selection rules, cleaning, split, frozen eval set, snapshots.

Real components throughout: a SQLite TrafficLog with inserted rows, and Bitext customer-support
rows read from the shared dataset.
"""

from __future__ import annotations

import json
import os
import random
import re
import stat
from pathlib import Path
from typing import Any

import pytest

from finetune.datasets import (
    DatasetFilters,
    DatasetSnapshot,
    Example,
    FrozenEvalSet,
    build_snapshot,
    clean,
    examples_from_csv,
    examples_from_jsonl,
    examples_from_log,
    split_bucket,
)
from hybrid_common.guard import DegenerationGuard
from router.errors import ArtifactError, ArtifactIntegrityError, ConfigError
from router.policy import luhn_valid
from router.traffic_log import LogRecord, TrafficLog
from tests.conftest import BITEXT_CSV


@pytest.fixture(scope="module")
def bitext() -> list[Example]:
    if not BITEXT_CSV.is_file():
        pytest.fail(f"Bitext dataset missing at {BITEXT_CSV}")
    return examples_from_csv(BITEXT_CSV, query_column="instruction", answer_column="response", category_column="category")


@pytest.fixture(scope="module")
def unique_bitext(bitext: list[Example]) -> list[Example]:
    """Bitext rows with distinct prompts (the file repeats a few instructions) whose answer keeps the
    question's numbers (some of Bitext's own answers miscopy its order number: the filter drops those)."""
    seen: set[str] = set()
    out = []
    for e in bitext:
        if any(c.isdigit() for c in e.query) and DegenerationGuard(question=e.query).check_text(e.answer) == "altered a number from the question":
            continue
        if e.prompt_key not in seen:
            seen.add(e.prompt_key)
            out.append(e)
    return out


def _user(text: str, answer: str, category: str | None = None, source: str = "") -> Example:
    return Example(({"role": "user", "content": text},), answer, category, source)


def _jaccard_words(a: Example, b: Example, n: int = 3) -> float:
    def shingles(text: str) -> set[str]:
        w = text.split()
        return {" ".join(w)} if len(w) <= n else {" ".join(w[i : i + n]) for i in range(len(w) - n + 1)}

    sa, sb = shingles(a.prompt_text), shingles(b.prompt_text)
    return len(sa & sb) / len(sa | sb)


def _long_prompts(examples: list[Example], count: int, start: int = 0) -> list[Example]:
    """Multi-sentence prompts (three Bitext instructions each), long enough for near-duplicate edits."""
    out = []
    for i in range(start, start + count):
        parts = examples[3 * i : 3 * i + 3]
        text = " ".join(p.query for p in parts)
        out.append(_user(text, parts[0].answer, parts[0].category, f"test:{i}"))
    return out


# ---------------------------------------------------------------------------- Example


def test_example_normalises_prompt_key_and_answer() -> None:
    a = _user("How do I  Cancel\tmy order?", "  Open your orders page.\r\nPick the order. \r\n")
    b = _user("how do i cancel my order?", "x")
    system = Example(({"role": "system", "content": "how do i cancel my order?"},), "x")
    assert a.prompt_key == b.prompt_key
    assert system.prompt_key != b.prompt_key  # role-tagged
    assert a.answer == "Open your orders page.\nPick the order."
    assert Example.from_dict(json.loads(json.dumps(a.to_dict()))) == a
    assert len({a, Example.from_dict(a.to_dict())}) == 1
    with pytest.raises(ConfigError, match="answer"):
        Example.from_dict({"messages": [{"role": "user", "content": "hi"}], "answer": 3})


# ---------------------------------------------------------------------------- clean


def test_clean_removes_exact_and_near_duplicates(unique_bitext: list[Example]) -> None:
    base = _long_prompts(unique_bitext, 40)
    exact = _user(base[3].query.upper().replace(" ", "   "), base[3].answer, source="exact")
    near = _user(base[5].query + " thanks", base[5].answer, source="near")
    assert _jaccard_words(near, base[5]) >= 0.9
    words = base[7].query.split()
    rewritten = " ".join(words[: len(words) // 2]) + " and something else entirely about refunds"
    different = _user(rewritten, base[7].answer, source="diff")
    assert _jaccard_words(different, base[7]) < 0.9

    kept, dropped = clean([*base, exact, near, different])
    sources = {e.source for e in kept}
    assert {"exact", "near"}.isdisjoint(sources)
    assert "diff" in sources and len(kept) == 41
    assert dropped["duplicate"] == 1 and dropped["near_duplicate"] == 1

    kept, dropped = clean([*base, exact, near], DatasetFilters(near_duplicate_threshold=1.0))
    assert "near" in {e.source for e in kept} and dropped["near_duplicate"] == 0


def test_near_duplicate_lsh_agrees_with_brute_force(unique_bitext: list[Example]) -> None:
    """The MinHash/LSH shortcut drops exactly what pairwise Jaccard (keep first) would."""
    rng = random.Random(7)
    base = _long_prompts(unique_bitext, 60)
    variants = []
    for i, e in enumerate(base[:60]):
        words = e.query.split()
        for _ in range(rng.randint(0, 3)):  # edits of varying size: some cross the threshold, some not
            words.insert(rng.randrange(len(words) + 1), rng.choice(["please", "now", "thanks", "urgent"]))
        variants.append(_user(" ".join(words), e.answer, source=f"variant:{i}"))
    rows = base + variants
    rng.shuffle(rows)
    filters = DatasetFilters(near_duplicate_threshold=0.8)
    kept, _ = clean(rows, filters)

    expected: list[Example] = []
    for e in rows:
        if all(e.prompt_key != k.prompt_key and _jaccard_words(e, k) < 0.8 for k in expected):
            expected.append(e)
    assert [e.source for e in kept] == [e.source for e in expected]
    assert 0 < len(rows) - len(kept) < len(variants)


def test_clean_filters_and_reports_reasons() -> None:
    good = "You can change the delivery address from the order page before it ships."
    rows = [
        _user("where is my parcel", good, source="ok"),
        _user("", good),
        _user("x " * 3000, good),
        _user("can I get a refund", "Yes."),
        _user("can I get a receipt", "y" * 5000),
        _user("what is the returns policy", "the policy is " + "the policy is " * 10),
        _user("what is the returns policy for shoes", "What is the returns policy for shoes?"),
    ]
    kept, dropped = clean(rows)
    assert [e.source for e in kept] == ["ok"]
    assert dropped == {
        "no_prompt": 1,
        "prompt_too_long": 1,
        "answer_too_short": 1,
        "answer_too_long": 1,
        "degenerate": 2,
        "duplicate": 0,
        "near_duplicate": 0,
    }


def test_pii_is_scrubbed_but_order_numbers_are_not(bitext: list[Example]) -> None:
    # Bitext's 15-digit order number happens to pass Luhn (as 1 in 10 do); vary its last digit.
    logged = next(m.group() for e in bitext for m in re.finditer(r"\b\d{13,19}\b", e.query))
    order = next(o for d in "0123456789" if not luhn_valid(o := logged[:-1] + d))
    card = "4111 1111 1111 1111"
    assert luhn_valid(card)
    row = _user(
        f"My card {card} was charged twice for order {order}, mail me at jane.doe@example.com",
        f"Sorry about order {order}. We refunded the card {card} and wrote to jane.doe@example.com today.",
    )
    (scrubbed,), _ = clean([row])
    for text in (scrubbed.query, scrubbed.answer):
        assert "[EMAIL]" in text and "jane.doe" not in text
        assert "[CARD_NUMBER]" in text and card not in text
        assert order in text
    (raw,), _ = clean([row], DatasetFilters(scrub_pii=False))
    assert raw == row


# ---------------------------------------------------------------------------- split


def test_split_is_stable_under_reordering_and_new_data(unique_bitext: list[Example]) -> None:
    first = unique_bitext[:2000]
    evals = {e.prompt_key for e in first if split_bucket(e) < 10}
    shuffled = first[:]
    random.Random(1).shuffle(shuffled)
    grown = shuffled + unique_bitext[2000:3000]
    assert {e.prompt_key for e in grown if split_bucket(e) < 10} & {e.prompt_key for e in first} == evals
    assert 0.06 < len(evals) / len(first) < 0.14
    assert all(0 <= split_bucket(e) < 100 for e in first)
    assert {e.prompt_key for e in first if split_bucket(e, salt="other") < 10} != evals


# ---------------------------------------------------------------------------- sources


def _record(i: int, query: str, answer: str | None, **overrides: Any) -> LogRecord:
    fields: dict[str, Any] = {
        "id": f"req-{i}",
        "requested_model": "auto",
        "reason": "local_category",
        "stream": False,
        "tier": "cloud",
        "category": "ORDER",
        "messages": [{"role": "user", "content": query}],
        "response": answer,
        "finish_reason": "stop",
    }
    fields.update(overrides)
    return LogRecord(**fields)


def test_examples_from_log_selection_rules(tmp_path: Path, bitext: list[Example]) -> None:
    q = [e for e in bitext if e.category == "ORDER"][:12]
    rows = [
        _record(0, q[0].query, q[0].answer),
        _record(1, q[1].query, q[1].answer, error_type="APITimeoutError"),
        _record(2, q[2].query, q[2].answer, tier="local"),
        _record(3, q[3].query, q[3].answer, tier="local", metadata={"feedback": "accepted"}),
        _record(4, q[4].query, q[4].answer, tier="local", metadata={"feedback": "rejected"}),
        _record(5, q[5].query, q[5].answer, category="PAYMENT"),
        _record(6, q[6].query, q[6].answer, finish_reason="length"),
        _record(7, q[7].query, "   "),
        _record(8, q[8].query, q[8].answer, messages=None),
        _record(9, q[9].query, q[9].answer, messages=[{"role": "tool", "content": "{}", "tool_call_id": "t"}]),
        _record(
            10,
            q[10].query,
            q[10].answer,
            messages=[
                {"role": "system", "content": "Be brief."},
                {"role": "user", "content": [{"type": "text", "text": q[10].query}]},
            ],
        ),
    ]
    path = tmp_path / "traffic.db"
    with TrafficLog(path) as log:
        assert all(log.record(r) for r in rows)
    with TrafficLog(tmp_path / "redacted.db", redact_patterns={"email": r"\S+@\S+"}) as redacted:
        redacted.record(_record(11, q[11].query + " a@b.com", q[11].answer))
        (from_redacted,) = examples_from_log(redacted)
        assert "[EMAIL]" in from_redacted.query

    assert [e.source for e in examples_from_log(path)] == ["log:req-0", "log:req-5", "log:req-10"]
    with TrafficLog(path) as log:
        selected = examples_from_log(log, categories=["ORDER"], include_local=True)
    assert [e.source for e in selected] == ["log:req-0", "log:req-3", "log:req-10"]
    assert selected[0].answer == q[0].answer and selected[0].category == "ORDER"
    assert selected[2].messages == ({"role": "system", "content": "Be brief."}, {"role": "user", "content": q[10].query})
    with pytest.raises(ArtifactError, match="no traffic log"):
        examples_from_log(tmp_path / "absent.db")
    assert not (tmp_path / "absent.db").exists()


def test_examples_from_jsonl_and_errors(tmp_path: Path) -> None:
    good = tmp_path / "chats.jsonl"
    user, answer = {"role": "user", "content": "Where is my order?"}, {"role": "assistant", "content": "It ships today.\r\n"}
    lines = [
        {"messages": [user, answer], "category": "ORDER"},
        {"messages": [{"role": "system", "content": "s"}, {"role": "user", "content": "hi"}, {"role": "assistant", "content": "Hi!"}]},
    ]
    good.write_text("\n".join(json.dumps(x) for x in lines) + "\n\n", encoding="utf-8")
    a, b = examples_from_jsonl(good)
    assert a.messages == ({"role": "user", "content": "Where is my order?"},) and a.answer == "It ships today."
    assert (a.category, a.source, b.category, b.source) == ("ORDER", "jsonl:chats.jsonl:1", None, "jsonl:chats.jsonl:2")

    bad = tmp_path / "bad.jsonl"
    bad.write_text(json.dumps(lines[0]) + "\n" + json.dumps({"messages": [user]}) + "\n", encoding="utf-8")
    with pytest.raises(ConfigError, match=r"bad\.jsonl:2: the last message must be the assistant answer"):
        examples_from_jsonl(bad)
    bad.write_text("{not json\n", encoding="utf-8")
    with pytest.raises(ConfigError, match=r"bad\.jsonl:1: not valid JSON"):
        examples_from_jsonl(bad)
    bad.write_text(json.dumps({"messages": [{"role": "robot", "content": "x"}, answer]}), encoding="utf-8")
    with pytest.raises(ConfigError, match=r"bad\.jsonl:1: messages\[0\]"):
        examples_from_jsonl(bad)
    with pytest.raises(ArtifactError, match="no such dataset file"):
        examples_from_jsonl(tmp_path / "missing.jsonl")


def test_examples_from_csv_and_errors(tmp_path: Path, bitext: list[Example]) -> None:
    first = bitext[0]
    assert first.source == f"csv:{BITEXT_CSV.name}:1" and first.category == "ORDER"
    assert "\r" not in first.answer and first.answer == first.answer.strip()
    assert first.messages == ({"role": "user", "content": "how can I cancel purchase 113542617735902?"},)

    with pytest.raises(ConfigError, match=r"missing column\(s\) \['query', 'answer'\]") as info:
        examples_from_csv(BITEXT_CSV)
    assert str(BITEXT_CSV) in str(info.value) and "instruction" in str(info.value)
    bad = tmp_path / "bad.csv"
    bad.write_text("query,answer\nhello,world answer\n ,orphan answer\n", encoding="utf-8")
    with pytest.raises(ConfigError, match=r"bad\.csv: data row 2 \(line 3\)"):
        examples_from_csv(bad)
    with pytest.raises(ArtifactError, match="no such dataset file"):
        examples_from_csv(tmp_path / "missing.csv")


# ---------------------------------------------------------------------------- frozen set and snapshots


def test_frozen_eval_set_survives_new_data(tmp_path: Path, unique_bitext: list[Example]) -> None:
    filters = DatasetFilters(eval_percent=20)
    first = build_snapshot(unique_bitext[:400], tmp_path, filters=filters, sources=["bitext:first"])
    frozen_file = tmp_path / "eval" / "frozen.jsonl"
    frozen_bytes = frozen_file.read_bytes()
    assert first.eval and all(split_bucket(e) < filters.eval_percent for e in first.eval)
    first_blocks = FrozenEvalSet.load(tmp_path).blocks
    assert first_blocks and all(30 <= b["count"] <= 50 for b in first_blocks)

    second = build_snapshot(unique_bitext[:2000], tmp_path, filters=filters, sources=["bitext:more"])
    frozen = FrozenEvalSet.load(tmp_path)
    assert frozen_file.read_bytes().startswith(frozen_bytes)  # earlier blocks are never rewritten
    assert frozen.blocks[: len(first_blocks)] == first_blocks and len(frozen.blocks) > len(first_blocks)
    assert second.eval[: len(first.eval)] == first.eval and second.id != first.id
    groups = frozen.by_category()
    assert all(30 <= len(groups[b["category"]]) <= 50 for b in frozen.blocks)
    assert {b["category"] for b in frozen.blocks} == set(groups)
    # Categories with too few evaluation candidates get no block yet (their quality stays unproven).
    counts: dict[str | None, int] = {}
    for e in unique_bitext[:2000]:
        if split_bucket(e) < filters.eval_percent:
            counts[e.category] = counts.get(e.category, 0) + 1
    assert {c for c, n in counts.items() if n >= 30} == set(groups)
    assert FrozenEvalSet.load(tmp_path).examples == second.eval


def test_uncategorised_traffic_gets_one_block_and_categories_join_later(tmp_path: Path, unique_bitext: list[Example]) -> None:
    filters = DatasetFilters(eval_percent=20, max_eval_examples=25)
    plain = [Example(e.messages, e.answer, None, e.source) for e in unique_bitext[:300]]
    first = build_snapshot(plain, tmp_path, filters=filters.model_copy(update={"near_duplicate_threshold": 1.0}))
    assert len(first.eval) == 25 and all(e.category is None for e in first.eval)
    labelled = build_snapshot(plain + unique_bitext[300:1500], tmp_path, filters=filters.model_copy(update={"near_duplicate_threshold": 1.0}))
    assert labelled.eval[:25] == first.eval
    assert {e.category for e in labelled.eval[25:]} and None not in {e.category for e in labelled.eval[25:]}


def test_an_interrupted_append_is_finished_or_dropped(tmp_path: Path, unique_bitext: list[Example]) -> None:
    filters = DatasetFilters(eval_percent=20)
    build_snapshot(unique_bitext[:400], tmp_path, filters=filters)
    data = tmp_path / "eval" / "frozen.jsonl"
    before = FrozenEvalSet.load(tmp_path).examples
    # Crash before the manifest was written: the side file is dropped, the old set stands.
    data.with_name("frozen.jsonl.next").write_text(data.read_text() + "{}\n")
    assert FrozenEvalSet.load(tmp_path).examples == before
    assert not data.with_name("frozen.jsonl.next").exists()


def test_no_eval_leakage_into_train(tmp_path: Path, unique_bitext: list[Example]) -> None:
    filters = DatasetFilters(max_eval_examples=30, eval_percent=20, min_eval_per_category=10, max_eval_per_category=15)
    originals = _long_prompts(unique_bitext, 300)
    first = build_snapshot(originals, tmp_path, filters=filters)
    frozen = first.eval
    assert len(frozen) >= 30

    # New traffic: reworded copies of the frozen prompts (mostly in the train bucket) and of train ones.
    variants = [_user(e.query + " thanks", e.answer, source=f"variant-of-eval:{i}") for i, e in enumerate(frozen)]
    variants += [_user(e.query + " thanks", e.answer, source=f"variant-of-train:{i}") for i, e in enumerate(first.train[:30])]
    assert sum(split_bucket(v) >= filters.eval_percent for v in variants[:30]) > 10
    second = build_snapshot(variants + originals[:5] + frozen[:3], tmp_path, filters=filters)

    frozen_keys = {e.prompt_key for e in frozen}
    for snapshot in (first, second):
        assert not frozen_keys & {e.prompt_key for e in snapshot.train}
        assert all(_jaccard_words(t, f) < filters.near_duplicate_threshold for t in snapshot.train for f in frozen)
    sources = {e.source for e in second.train}
    assert not any(s.startswith("variant-of-eval") for s in sources)
    assert any(s.startswith("variant-of-train") for s in sources)
    assert second.manifest["counts"]["excluded_eval_overlap"] > 10


def test_snapshot_is_idempotent_and_tamper_evident(tmp_path: Path, unique_bitext: list[Example]) -> None:
    rows = [e for e in unique_bitext if e.category == "ORDER"][:400]  # enough for its frozen block (30 in eval)
    a = build_snapshot(rows, tmp_path, seed=3, sources=["bitext"])
    shuffled = rows[:]
    random.Random(0).shuffle(shuffled)
    b = build_snapshot(shuffled, tmp_path, seed=3, sources=["bitext"])
    assert a.id == b.id and a.path == b.path == tmp_path / "datasets" / a.id
    assert b.manifest["created_at"] == a.manifest["created_at"]
    assert build_snapshot(rows, tmp_path, seed=4).id != a.id

    loaded = DatasetSnapshot.load(a.path)
    assert loaded.train == a.train and loaded.eval == a.eval
    assert len(loaded.train) == loaded.manifest["counts"]["train"] > 200
    assert loaded.manifest["records"]["train"] == [e.source for e in loaded.train]
    assert loaded.manifest["filters"]["eval_percent"] == 10 and loaded.manifest["seed"] == 3
    assert set(loaded.manifest["dropped"]) >= {"duplicate", "near_duplicate"}
    train_file = a.path / "train.jsonl"
    assert not os.stat(train_file).st_mode & (stat.S_IWUSR | stat.S_IWGRP | stat.S_IWOTH)
    assert not [p for p in (tmp_path / "datasets").iterdir() if p.name.startswith(".")]

    os.chmod(train_file, 0o644)
    text = train_file.read_text(encoding="utf-8")
    train_file.write_text(text.replace(a.train[0].answer[:20], "Tampered answer text", 1), encoding="utf-8")
    with pytest.raises(ArtifactIntegrityError, match="checksum mismatch"):
        DatasetSnapshot.load(a.path)
    with pytest.raises(ArtifactIntegrityError):
        build_snapshot(rows, tmp_path, seed=3)

    frozen_file = tmp_path / "eval" / "frozen.jsonl"
    frozen_file.write_text(frozen_file.read_text(encoding="utf-8") + "\n", encoding="utf-8")
    with pytest.raises(ArtifactIntegrityError, match="frozen eval set was altered"):
        FrozenEvalSet.load(tmp_path)



def test_a_frozen_set_from_before_blocks_is_kept_and_extended(tmp_path: Path, unique_bitext: list[Example]) -> None:
    """A set frozen by an earlier release (one file, no blocks) stays first; categories add blocks after it."""
    import json as _json

    from hybrid_common.files import sha256_file

    filters = DatasetFilters(eval_percent=20)
    legacy = [e for e in unique_bitext[:2000] if split_bucket(e) < 20][:40]
    eval_dir = tmp_path / "eval"
    eval_dir.mkdir()
    data = eval_dir / "frozen.jsonl"
    data.write_text("".join(_json.dumps(e.to_dict(), ensure_ascii=False, sort_keys=True) + "\n" for e in legacy), encoding="utf-8")
    (eval_dir / "frozen.json").write_text(_json.dumps({"sha256": sha256_file(data), "count": len(legacy), "created_at": "2026-11-20"}))
    assert FrozenEvalSet.load(tmp_path).blocks == [{"category": None, "legacy": True, "count": 40}]

    snapshot = build_snapshot(unique_bitext[:2000], tmp_path, filters=filters)
    frozen = FrozenEvalSet.load(tmp_path)
    assert snapshot.eval[:40] == legacy and frozen.blocks[0]["legacy"]
    assert len(frozen.blocks) > 1 and len(set(e.prompt_key for e in frozen.examples)) == len(frozen.examples)
    for category, examples in frozen.by_category().items():
        assert len(examples) <= 50  # legacy examples count towards the category's block size


def test_old_snapshots_are_pruned_but_trained_on_and_newest_ones_stay(tmp_path: Path, unique_bitext: list[Example]) -> None:
    from finetune.datasets import prune_snapshots

    ids = []
    for i in range(5):  # five different datasets, oldest first
        snapshot = build_snapshot(unique_bitext[i * 40 : i * 40 + 120], tmp_path, seed=i)
        os.utime(snapshot.path / "manifest.json", ns=(i * 10**9, i * 10**9))  # same second: order by mtime
        ids.append(snapshot.id)
    deleted = prune_snapshots(tmp_path, keep={ids[0]}, keep_latest=2)
    assert sorted(deleted) == sorted(ids[1:3])
    assert sorted(p.name for p in (tmp_path / "datasets").iterdir()) == sorted([ids[0], ids[3], ids[4]])
    assert DatasetSnapshot.load(tmp_path / "datasets" / ids[4]).id == ids[4]  # what stays is intact
    assert prune_snapshots(tmp_path, keep={ids[0]}, keep_latest=2) == []


# ---------------------------------------------------------------------------- conversations

SYSTEM = {"role": "system", "content": "You are the support assistant of an online shop."}


def _follow_up(first: Example, follow_up: str, i: int, source: str) -> Example:
    """A conversation: ``first``'s question and answer, then ``follow_up``, answered by the teacher."""
    messages = (SYSTEM, *first.messages, {"role": "assistant", "content": first.answer}, {"role": "user", "content": follow_up})
    answer = f"Done: request {i} is on its way, and you will get a confirmation email within two business days."
    return Example(messages, answer, first.category, source)


def test_a_logged_follow_up_keeps_its_conversation_and_category(tmp_path: Path, bitext: list[Example]) -> None:
    q = [e for e in bitext if e.category == "ORDER"][:2]
    conversation = [
        {"role": "system", "content": "Be brief."},
        {"role": "user", "content": q[0].query},
        {"role": "assistant", "content": q[0].answer},
        {"role": "user", "content": "ok do it"},
    ]
    with TrafficLog(tmp_path / "traffic.db") as log:
        # The router logs the conversation's category for a follow-up, which its last line alone would not get.
        assert log.record(_record(0, "ok do it", q[1].answer, category="CANCEL", messages=conversation))
        assert log.record(_record(1, q[1].query, q[1].answer))
        follow_up, first = examples_from_log(log)
    assert follow_up.messages == tuple(conversation)
    assert follow_up.category == "CANCEL" and follow_up.query == "ok do it" and follow_up.answer == q[1].answer
    assert follow_up.followup and not first.followup


def test_snapshots_and_the_frozen_set_keep_the_history(tmp_path: Path, unique_bitext: list[Example]) -> None:
    follow_ups = ["ok do it", "yes please go ahead", "and how long will that take?", "can you do that for me now"]
    conversations = [_follow_up(e, follow_ups[i % 4], i, f"conv:{i}") for i, e in enumerate(unique_bitext[::40][:120])]
    snapshot = build_snapshot(conversations, tmp_path, filters=DatasetFilters(eval_percent=30, min_eval_per_category=2))
    assert snapshot.train and snapshot.eval
    originals = {e.source: e for e in conversations}
    reread = DatasetSnapshot.load(snapshot.path)
    for example in [*reread.train, *reread.eval, *FrozenEvalSet.load(tmp_path).examples]:
        original = originals[example.source]
        assert example.messages == original.messages and len(example.messages) == 4
        assert example.category == original.category and example.followup
    line = (snapshot.path / "train.jsonl").read_text(encoding="utf-8").splitlines()[0]
    assert [m["role"] for m in json.loads(line)["messages"]] == ["system", "user", "assistant", "user"]


def test_follow_ups_are_told_apart_by_their_history(unique_bitext: list[Example]) -> None:
    first = max(unique_bitext[:500], key=lambda e: len(e.answer.split()))  # a long answer: the history dominates
    same_last = [_follow_up(e, "ok do it", i, f"same-last:{i}") for i, e in enumerate([first, *unique_bitext[500:510]])]
    other_question = _follow_up(first, "actually cancel it instead and refund me", 90, "other-question")
    edited = same_last[0].messages[1]["content"] + " please"
    reworded = Example((SYSTEM, {"role": "user", "content": edited}, *same_last[0].messages[2:]), same_last[0].answer, source="reworded")
    assert _jaccard_words(other_question, same_last[0]) >= 0.9 and _jaccard_words(reworded, same_last[0]) >= 0.9

    kept, dropped = clean([*same_last, other_question, reworded])
    # Same last turn, other history: different examples. Same history, other question: too. Only the
    # reworded copy of a whole conversation is a near duplicate.
    assert [e.source for e in kept] == [*(e.source for e in same_last), "other-question"]
    assert dropped["near_duplicate"] == 1
    assert len({e.prompt_key for e in same_last}) == len(same_last)
    buckets = [split_bucket(e) for e in same_last]
    assert buckets == [split_bucket(Example.from_dict(e.to_dict())) for e in same_last]  # keyed on the conversation
    assert len(set(buckets)) > 1


def test_a_teacher_answer_replaying_an_earlier_turn_is_dropped() -> None:
    earlier = "Your order ships from our warehouse tomorrow morning and arrives within three business days"
    history = (
        {"role": "user", "content": "when will my order arrive"},
        {"role": "assistant", "content": earlier},
        {"role": "user", "content": "ok do it"},
    )
    replay = earlier + " and you will get a tracking link by email."
    fresh = "Done: I have upgraded the delivery to express, so it arrives tomorrow."
    rows = [Example(history, replay, source="replay"), Example(history, fresh, source="fresh"), Example(history[-1:], replay, source="alone")]
    kept, dropped = clean(rows)
    assert [e.source for e in kept] == ["fresh", "alone"]  # the same answer to the turn alone repeats nothing
    assert dropped["degenerate"] == 1


def test_a_logged_later_turn_is_trained_and_evaluated_on_the_prompt_it_was_served(tmp_path) -> None:
    from finetune.datasets import Example, examples_from_log
    from router.traffic_log import LogRecord, TrafficLog

    messages = [
        {"role": "user", "content": "where is my parcel?"},
        {"role": "assistant", "content": "It ships tomorrow."},
        {"role": "user", "content": "I want to cancel my order"},
        {"role": "assistant", "content": "Here are the steps."},
        {"role": "user", "content": "ok do it"},
    ]
    with TrafficLog(tmp_path / "log.sqlite3") as log:
        log.record(LogRecord(id="r1", created_at="2026-12-01T00:00:00+00:00", requested_model="auto", tier="cloud", backend="litellm",
                             served_model="gpt-4o", category="ORDER", reason="edge_case", stream=False, messages=messages,
                             response="To cancel, open Orders and choose Cancel.", finish_reason="stop", topic_start=2))  # fmt: skip
    (example,) = examples_from_log(tmp_path / "log.sqlite3")
    assert example.topic_start == 2 and example.messages == tuple(messages)
    assert Example.from_dict(example.to_dict()) == example and Example.from_dict(example.to_dict()).topic_start == 2
    served = example.as_served("topic")
    assert served.messages == ({"role": "user", "content": "I want to cancel my order\nok do it"},)
    assert example.as_served("full") is example
    with pytest.raises(ConfigError):
        Example.from_dict({**example.to_dict(), "topic_start": 9})
