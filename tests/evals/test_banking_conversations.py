"""The Banking77 conversations are reproducible, use only holdout wording, and their labels hold."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys

import pytest

from evals import banking_conversations as bc
from evals import make_conversations as mc
from evals.classifier_eval import BANKING77, read_rows

CONTEXT_KINDS = {"confirm", "clarify", "anaphoric"}
SELF_CONTAINED = {"first", "same_category", "switch"}
HAND_WRITTEN = {"confirm": mc.CONFIRM, "clarify": mc.CLARIFY, "anaphoric": mc.GENERIC_ANAPHORIC, "out_of_scope": mc.OUT_OF_SCOPE_REQUESTS}


def _normal(text: str) -> str:
    return re.sub(r"[^a-z0-9]+", " ", text.casefold()).strip()


@pytest.fixture(scope="module")
def conversations() -> list[dict]:
    return bc.build(n=60)


@pytest.fixture(scope="module")
def test_queries() -> dict[str, str]:
    return dict(read_rows(BANKING77 / "test.csv"))


def test_build_is_deterministic_across_processes(conversations: list[dict]) -> None:
    assert bc.build(n=60) == conversations
    # The set is rebuilt, never stored: it must not depend on string hashing either.
    code = "import json; from evals.banking_conversations import build; print(json.dumps(build(n=60)))"
    env = {**os.environ, "PYTHONHASHSEED": "12345"}
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, env=env).stdout
    assert json.loads(out) == conversations
    assert bc.build(seed=6, n=60) != conversations


def test_shape_and_first_turns(conversations: list[dict], test_queries: dict[str, str]) -> None:
    train = {_normal(text) for text, _ in read_rows(BANKING77 / "train.csv")}
    firsts = [c["turns"][0] for c in conversations]
    assert len(conversations) == 60 and len({t["text"] for t in firsts}) == 60
    assert len({t["intent"] for t in firsts}) == 60  # 60 < 77 intents: spread means no intent twice
    assert all(c["split"] == mc.HOLDOUT and 2 <= len(c["turns"]) <= 4 for c in conversations)
    assert all(t["kind"] == "first" and t["text"] in test_queries and _normal(t["text"]) not in train for t in firsts)


def test_hand_written_turns_use_only_holdout_halves(conversations: list[dict], test_queries: dict[str, str]) -> None:
    dev = {_normal(t) for lists in HAND_WRITTEN.values() for half in ("dev", "test") for t in lists[half]}
    dev |= {_normal(p) for half in ("dev", "test") for p in mc.SWITCH_PREFIXES[half]}
    bitext_specific = {_normal(t) for halves in mc.ANAPHORIC.values() for half in halves.values() for t, _ in half}
    lowered = {q[0].lower() + q[1:]: q for q in test_queries}
    for conversation in conversations:
        for turn in conversation["turns"]:
            assert _normal(turn["text"]) not in dev | bitext_specific, (conversation["id"], turn["text"])
            if turn["kind"] in HAND_WRITTEN:
                assert turn["text"] in HAND_WRITTEN[turn["kind"]][mc.HOLDOUT], (conversation["id"], turn["text"])
            elif turn["kind"] == "switch":
                prefix = next((p for p in mc.SWITCH_PREFIXES[mc.HOLDOUT] if turn["text"].startswith(p)), "")
                rest = turn["text"][len(prefix) :]
                assert rest in test_queries or rest in lowered, (conversation["id"], turn["text"])
            else:
                assert turn["text"] in test_queries, (conversation["id"], turn["text"])


def test_labels_are_intents_and_context_turns_continue_their_topic(conversations: list[dict], test_queries: dict[str, str]) -> None:
    intents = set(test_queries.values())
    lowered = {q[0].lower() + q[1:]: q for q in test_queries}
    for conversation in conversations:
        turns = conversation["turns"]
        topic = 0
        for i, turn in enumerate(turns):
            assert turn["reference"] is None and turn["intent"] == turn["category"]
            assert (turn["category"] is None) == (turn["kind"] == "out_of_scope")
            assert turn["category"] is None or turn["category"] in intents
            if turn["kind"] in CONTEXT_KINDS:
                assert turn["continues"] == topic and turns[topic]["kind"] in SELF_CONTAINED
                assert turn["category"] == turns[topic]["category"]
                assert turns[i - 1]["kind"] != "out_of_scope"
                assert turn["kind"] == "anaphoric" or turns[i - 1]["kind"] != turn["kind"]
            else:
                assert turn["continues"] is None
            if turn["kind"] in {"same_category", "switch"}:
                tails = (turn["text"], *(turn["text"][len(p) :] for p in mc.SWITCH_PREFIXES[mc.HOLDOUT] if turn["text"].startswith(p)))
                query = next(q if q in test_queries else lowered[q] for q in tails if q in test_queries or q in lowered)
                assert turn["category"] == test_queries[query]
                assert (turn["category"] == turns[topic]["category"]) == (turn["kind"] == "same_category")
                topic = i
