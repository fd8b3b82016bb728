"""Does a learned follow-up detector carry over to a writer it never saw? (``make eval-followup-writers``)

The word rule (``router._conversation.context_dependent``) routes 0.97 of the follow-ups right on
the wording it was written from, 0.876 on the first holdout's and 0.804 on ``holdout2``'s (a fourth
writer, 2026-12-04): word lists follow their writer. ``evals/learned_followups.py`` tried a
two-class detector on dev alone (follow-up or not, over the turn's embedding): it recognised unseen
follow-ups but also read out-of-scope requests as follow-ups. Here the detector is a *three-class*
logistic regression over the turn's sentence embedding (the one the request's classification
already computed: no extra encoder run): follow-up, out of scope, self-contained support question.
A turn counts as context-dependent when the rule says so or the follow-up class's probability
reaches a threshold.

Trained first on three wording halves and tested once on holdout2 (0.881, 2026-12-04), it is now
trained on four (dev, test, holdout, holdout2: every wording whose results have been read) and
tested once on ``holdout3``, written afterwards by a fifth writer who read neither the rule, the
detector nor any result.

* Examples: each half's context-dependent turns (confirm, clarify, anaphoric), its out-of-scope
  requests, its switches and same-category questions, and Bitext instructions the demo's
  classifier never trains on (``bucket < 60``; none of holdout3's texts).
* Selection, without holdout3: for each (C, threshold), train on three halves and route the fourth
  (leave one half out). The chosen setting has the best mean follow-up accuracy among those whose
  worst switch recall and worst out-of-scope accuracy are both >= 0.90 (an out-of-scope request
  read as a follow-up gets a local answer about the old topic: the costly mistake).
* Test, once: the chosen setting trained on all four halves routes holdout3's conversations.
  The other settings' holdout3 figures are printed too, marked as not used for the choice.

Writes ``followup_writers`` into ``evals/results/conversations.json`` and the chosen detector (trained
on all four development halves, for this classifier's encoder) to ``--save``
(``.conversations/followup_detector.npz``), which ``make eval-conversations`` serves with
(``conversation.followup_detector``). Figures, not assertions.
"""

from __future__ import annotations

import argparse
from collections.abc import Callable, Collection, Sequence
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np

from evals.conversation_eval import (
    CONTEXT_KINDS,
    CORPORA,
    RESULTS,
    classifier_for,
    load_conversations,
    route_turns,
    routing_figures,
    routing_summary,
)
from evals.figures import merge_figures
from router import FollowUpDetector

DEVELOPMENT = ("dev", "test", "holdout", "holdout2")
TEST = "holdout3"
C_VALUES = (0.3, 1.0, 3.0)
THRESHOLDS = (0.5, 0.7, 0.9)
SAFETY = 0.90  # worst held-out switch recall and out-of-scope accuracy a setting may have to be chosen


def _texts(conversations: Sequence[dict[str, Any]], halves: Sequence[str], kinds: set[str]) -> list[str]:
    return sorted({t["text"] for c in conversations if c["split"] in halves for t in c["turns"] if t["kind"] in kinds})


def detector_examples(
    conversations: Sequence[dict[str, Any]], halves: Sequence[str], bitext: Sequence[str], embeddings: dict[str, Any],
    *, leave_out: Collection[str] = (),
) -> dict[str, list[Any]]:
    """The three classes' embeddings from ``halves``' turns and Bitext instructions, none of ``leave_out``."""
    def pick(texts: Sequence[str]) -> list[Any]:
        return [embeddings[t] for t in texts if t not in leave_out]

    return {
        "follow_up": pick(_texts(conversations, halves, set(CONTEXT_KINDS))),
        "out_of_scope": pick(_texts(conversations, halves, {"out_of_scope"})),
        "self_contained": pick(_texts(conversations, halves, {"switch", "same_category"}) + list(bitext)),
    }


def main(argv: list[str] | None = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--workdir", type=Path, default=Path(".conversations"))
    parser.add_argument("--results", type=Path, default=RESULTS)
    parser.add_argument("--save", type=Path, default=None, help="where the chosen detector is written (default: WORKDIR/followup_detector.npz)")
    args = parser.parse_args(argv)
    from evals.demo import bucket, load_bitext
    from router import resolve_topics

    args.workdir.mkdir(parents=True, exist_ok=True)
    classifier = classifier_for(args.workdir)
    known = {str(c) for c in classifier.classes_}
    conversations = [c for path in CORPORA for c in load_conversations(path)]
    test_texts = {t["text"] for c in conversations if c["split"] == TEST for t in c["turns"]}
    bitext = sorted({r["instruction"] for r in load_bitext() if bucket(r["instruction"]) < 60} - test_texts)
    texts = sorted({t["text"] for c in conversations for t in c["turns"]} | set(bitext))
    by_text = dict(zip(texts, classifier.classify_many(texts), strict=True))  # each turn alone, once
    embeddings = {text: prediction.embedding for text, prediction in by_text.items()}
    own = {c["id"]: [by_text[t["text"]] for t in c["turns"]] for c in conversations}

    def fit(halves: Sequence[str], c_value: float) -> FollowUpDetector:
        examples = detector_examples(conversations, halves, bitext, embeddings)
        return FollowUpDetector.fit(examples, encoder_sha256=classifier.encoder_sha256_, c=c_value)

    def routed(half: str, learned: Callable[[Any], bool] | None = None) -> dict[str, Any]:
        chosen = [c for c in conversations if c["split"] == half]
        resolve = lambda turns, preds: resolve_topics(turns, preds, learned=learned)  # noqa: E731
        return routing_summary(routing_figures(chosen, route_turns(chosen, own, resolve), known))

    results: dict[str, Any] = {"rule": {half: routed(half) for half in (*DEVELOPMENT, TEST)}}
    last = [c for c in conversations if c["split"] == TEST]
    results["last_message_" + TEST] = routing_figures(last, route_turns(last, own, lambda turns, preds: preds), known)["followup_accuracy"]
    grid: dict[str, Any] = {}
    for c_value in C_VALUES:
        models = {held: fit([h for h in DEVELOPMENT if h != held], c_value) for held in DEVELOPMENT}
        full = fit(DEVELOPMENT, c_value)
        for threshold in THRESHOLDS:
            held_out = {held: routed(held, replace(models[held], threshold=threshold).is_follow_up) for held in DEVELOPMENT}
            grid[f"C{c_value}_t{threshold}"] = {
                "c": c_value, "threshold": threshold, "left_out": held_out,
                "left_out_followup_accuracy": float(np.mean([r["followup_accuracy"] for r in held_out.values()])),
                "worst_switch_recall": min(r["switch_recall"] for r in held_out.values()),
                "worst_out_of_scope_accuracy": min(r["out_of_scope_accuracy"] for r in held_out.values()),
                TEST: routed(TEST, replace(full, threshold=threshold).is_follow_up),
            }  # fmt: skip
    safe = [k for k, g in grid.items() if g["worst_switch_recall"] >= SAFETY and g["worst_out_of_scope_accuracy"] >= SAFETY]
    chosen = max(safe, key=lambda k: grid[k]["left_out_followup_accuracy"]) if safe else None
    results |= {"grid": grid, "chosen": chosen, "chosen_" + TEST: grid[chosen][TEST] if chosen else None}
    if chosen is not None:  # what the router serves: the chosen setting trained on every development half
        setting = grid[chosen]
        detector = replace(fit(DEVELOPMENT, setting["c"]), threshold=setting["threshold"])
        results["detector"] = str(detector.save(args.save or args.workdir / "followup_detector.npz"))

    rule = ", ".join(f"{half} {r['followup_accuracy']:.3f}" for half, r in results["rule"].items())
    print(f"the rule's follow-ups: {rule}; last message on {TEST}: {results['last_message_' + TEST]:.3f}")
    print(f"{'setting':12s} left-out follow-ups  worst switch  worst oos | {TEST} (not used to choose): follow-ups  context  switch  oos")
    for name, g in grid.items():
        t = g[TEST]
        mark = " <- chosen" if name == chosen else (" (unsafe)" if name not in safe else "")
        print(f"{name:12s} {g['left_out_followup_accuracy']:19.3f}  {g['worst_switch_recall']:12.3f}  {g['worst_out_of_scope_accuracy']:9.3f} | "
              f"{t['followup_accuracy']:40.3f}  {t['context_dependent_accuracy']:7.3f}  {t['switch_recall']:6.3f}  {t['out_of_scope_accuracy']:4.3f}{mark}")  # fmt: skip
    merge_figures(args.results, {"followup_writers": results})
    print(f"written to {args.results} (followup_writers)")
    return results


if __name__ == "__main__":
    main()
