"""The follow-up detector's examples: which turns, from which halves, never the ones left out (evals.followup_writers)."""
from __future__ import annotations

from evals.conversation_eval import CONTEXT_KINDS
from evals.followup_writers import detector_examples


def conversation(split: str, *turns: tuple[str, str]) -> dict:
    return {"split": split, "turns": [{"text": text, "kind": kind} for text, kind in turns]}


def test_examples_come_from_the_named_halves_and_leave_out_the_served_texts() -> None:
    context_kind = sorted(CONTEXT_KINDS)[0]
    conversations = [
        conversation("dev", ("where is my order", "first"), ("ok do it", context_kind), ("write me a poem", "out_of_scope"),
                     ("how do I get a refund", "switch")),
        conversation("holdout", ("cancel it", context_kind), ("same for the other one", context_kind)),
        conversation("test", ("the second one please", context_kind), ("tell me a joke", "out_of_scope")),
    ]  # fmt: skip
    texts = {t["text"] for c in conversations for t in c["turns"]} | {"track my parcel", "change my address"}
    embeddings = {text: f"vec:{text}" for text in texts}

    examples = detector_examples(
        conversations, ("dev", "holdout"), ["track my parcel", "change my address"], embeddings, leave_out={"cancel it", "change my address"}
    )

    assert examples == {
        "follow_up": ["vec:ok do it", "vec:same for the other one"],  # holdout's "cancel it" left out; test's never taken
        "out_of_scope": ["vec:write me a poem"],
        "self_contained": ["vec:how do I get a refund", "vec:track my parcel"],  # first turns are neither
    }
