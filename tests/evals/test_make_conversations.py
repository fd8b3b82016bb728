"""The committed conversation benchmark is reproducible, its dev, test, holdout, holdout2 and holdout3 wording never overlap, and its labels hold."""

from __future__ import annotations

import json
import re
from collections import defaultdict

import pytest

from evals import make_conversations as mc
from evals.demo import bucket, load_bitext

HAND_WRITTEN = {"confirm": mc.CONFIRM, "clarify": mc.CLARIFY, "out_of_scope": mc.OUT_OF_SCOPE_REQUESTS}
CONTEXT_KINDS = {"confirm", "clarify", "anaphoric"}


def _normal(text: str) -> str:
    """Wording without case and punctuation: "OK, do it!" and "ok do it" are the same template. A turn
    of symbols alone ("??", "👍") is its own wording, not the empty one."""
    return re.sub(r"[^a-z0-9]+", " ", text.casefold()).strip() or text


def _half(split: str) -> dict[str, set[str]]:
    """Each hand-written list's half for one split, by follow-up kind."""
    half = {kind: set(lists[split]) for kind, lists in HAND_WRITTEN.items()}
    half["anaphoric"] = set(mc.GENERIC_ANAPHORIC[split]) | {t for c in mc.ANAPHORIC.values() for t, _ in c[split]}
    half["switch_prefix"] = set(mc.SWITCH_PREFIXES[split])
    return half


@pytest.fixture(scope="module")
def committed() -> list[dict]:
    return [json.loads(line) for path, _, _ in mc.CORPORA for line in path.read_text(encoding="utf-8").splitlines()]


def test_the_committed_files_are_what_build_writes() -> None:
    assert [path for path, _, _ in mc.CORPORA] == [mc.OUT, mc.HOLDOUT_OUT, mc.HOLDOUT2_OUT, mc.HOLDOUT3_OUT]
    for path, seed, wording in mc.CORPORA:
        assert mc.render(mc.build(seed, wording)).splitlines() == path.read_text(encoding="utf-8").splitlines()
    main = [json.loads(line) for line in mc.OUT.read_text(encoding="utf-8").splitlines()]
    holdouts = {wording: [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines()]
                for path, _, wording in mc.CORPORA if wording is not None}  # fmt: skip
    firsts = [c["turns"][0]["text"] for c in main]
    assert len(main) >= 360 and len(set(firsts)) == len(firsts)
    assert all(2 <= len(c["turns"]) <= 4 and c["split"] == mc.split_of(c["turns"][0]["text"]) for c in main)
    # The holdouts' first turns come from the same replay pool (other draws: they are not what a holdout measures).
    for half, holdout in holdouts.items():
        held_firsts = [c["turns"][0]["text"] for c in holdout]
        assert len(holdout) >= 360 and len(set(held_firsts)) == len(held_firsts) and all(bucket(t) >= 80 for t in held_firsts)
        assert all(2 <= len(c["turns"]) <= 4 and c["split"] == half for c in holdout)


def test_the_halves_never_share_hand_written_wording(committed: list[dict]) -> None:
    splits = ("dev", "test", *(wording for _, _, wording in mc.CORPORA if wording is not None))
    wording = {split: {_normal(t) for texts in _half(split).values() for t in texts} for split in splits}
    for i, split in enumerate(splits):
        for other in splits[i + 1 :]:
            assert not wording[split] & wording[other], (split, other, wording[split] & wording[other])
    instructions = defaultdict(list)  # a switch turn is an optional prefix and a Bitext instruction
    for row in load_bitext():
        instructions[mc._reference(row)].append(row["instruction"])
    for conversation in committed:
        half = _half(conversation["split"])
        for turn in conversation["turns"][1:]:
            if turn["kind"] in half:
                assert turn["text"] in half[turn["kind"]], (conversation["id"], turn["text"])
            elif turn["kind"] == "switch":
                tails = [i for i in instructions[turn["reference"]] if turn["text"].casefold().endswith(i.casefold())]
                assert tails, (conversation["id"], turn["text"])
                prefix = turn["text"][: len(turn["text"]) - len(tails[0])]
                assert prefix == "" or prefix in half["switch_prefix"], (conversation["id"], prefix)


def test_references_are_bitext_answers_and_context_turns_keep_their_topic(committed: list[dict]) -> None:
    responses = {mc._reference(row) for row in load_bitext()}
    for conversation in committed:
        turns = conversation["turns"]
        for turn in turns:
            assert turn["reference"] is None or turn["reference"] in responses
            assert (turn["category"] is None) == (turn["kind"] == "out_of_scope") == (turn["reference"] is None)
            if turn["kind"] in CONTEXT_KINDS:
                topic = turns[turn["continues"]]
                assert topic["kind"] in {"first", "same_category", "switch"}
                assert (turn["category"], turn["intent"], turn["reference"]) == (topic["category"], topic["intent"], topic["reference"])
            else:
                assert turn["continues"] is None
