"""Conversation routing on Banking77: the follow-up rule measured on a dataset it was not tuned on.

``router._conversation`` (the follow-up detector and ``resolve_topics``) was chosen on the *dev*
conversations of the Bitext benchmark (``evals/make_conversations.py``); the project's rule is
that a method tuned on one dataset is shown on another too. This builds conversations of the same
schema and kind mix from Banking77 (77 banking intents) and measures last-message against
in-context routing with ``evals.conversation_eval``'s own functions:

* first turns: Banking77 ``test.csv`` queries, spread round-robin over the 77 intents, never
  repeated; queries that also appear in ``train.csv`` are left out, so no turn is one the
  classifier was fitted on;
* follow-ups, with ``make_conversations.KIND_WEIGHTS`` / ``CONTEXT_WEIGHTS`` and its structural
  rules (no context-dependent turn right after an out-of-scope one, no confirm after a confirm nor
  clarify after a clarify, ``continues`` = the topic's last self-contained turn):
  ``confirm`` / ``clarify`` / ``anaphoric`` turns from the *holdout* halves of the generic lists
  (``CONFIRM``, ``CLARIFY``, ``GENERIC_ANAPHORIC``) labelled with the topic's intent — never the
  Bitext category-specific anaphoric templates, which are about orders and deliveries; Banking77
  has no action / information split, so a confirmation may follow any intent (some read oddly
  after a pure question, but they are still turns that only make sense in context);
  ``same_category`` another ``test.csv`` query of the topic's intent; ``switch`` one of another
  intent, sometimes after a holdout ``SWITCH_PREFIXES`` opener; ``out_of_scope`` a holdout
  ``OUT_OF_SCOPE_REQUESTS`` request labelled ``None``.

Every conversation is ``split="holdout"``: the wording no version of the rule was shaped on (the
rule was written on dev and revised on test's misses), the labels are the intents
and there are no reference answers (``reference`` is None). The set is rebuilt deterministically
from the CSVs, so it is not written to disk.

The classifier is the demo's frozen-encoder ``EmbeddingClassifier`` with the 77 intents as classes,
fitted on ``train.csv`` less every 10th row; the threshold is calibrated (default objective,
best routed accuracy, which scores a ``None`` example right when sent to the edge) on those held-out
rows plus the *dev* half of ``OUT_OF_SCOPE_REQUESTS`` labelled ``None``, so clear out-of-scope
requests go to the edge while the conversations' holdout requests stay unseen.
Two learned follow-up detectors are measured beside the rule (``router.FollowUpDetector``):
``in_context_learned_banking``, trained as a Banking77 deployment would (its classifier's own
training questions as the self-contained class; follow-up and out-of-scope wording from the Bitext
benchmark's dev and test halves only, so these conversations' holdout wording is unseen): the
headline; and ``in_context_learned``, ``make eval-followup-writers``'s Bitext detector as it is
(its training includes the holdout wording, so only the Banking77 questions are new to it), which
shows what a detector trained on another domain's questions does to switches.
``python -m evals.banking_conversations`` merges ``banking77_*`` keys into ``--results``.
"""

from __future__ import annotations

import argparse
import os
import random
import time
from collections import defaultdict
from pathlib import Path
from typing import Any

from evals.classifier_eval import BANKING77, Rows, read_rows
from evals.conversation_eval import RESULTS, own_predictions, route_turns, routing_figures
from evals.figures import merge_figures
from evals.make_conversations import (
    CLARIFY,
    CONFIRM,
    CONTEXT_KINDS,
    GENERIC_ANAPHORIC,
    HOLDOUT,
    NO_PREFIX_SHARE,
    OUT_OF_SCOPE_REQUESTS,
    SHORT_SWITCH_SHARE,
    SWITCH_PREFIXES,
    _with_prefix,
    draw_kind,
)

WORKDIR = Path(".conversations") / "banking77-classifier"
SPLIT = HOLDOUT  # the half of every hand-written list the conversations use; dev and test shaped the rule
HELD_OUT_EVERY = 10  # every 10th train.csv row calibrates the threshold instead of fitting
ROWS_PER_CONVERSATION = 20  # --limit N trains on at most N * 20 train.csv rows


def _test_pool() -> dict[str, list[str]]:
    """test.csv queries by intent (file order), without those train.csv also holds."""
    seen = {text.strip().casefold() for text, _ in read_rows(BANKING77 / "train.csv")}
    pool: dict[str, list[str]] = defaultdict(list)
    for text, intent in read_rows(BANKING77 / "test.csv"):
        if text.strip().casefold() not in seen:
            pool[intent].append(text)
    return {intent: pool[intent] for intent in sorted(pool)}


def _turn(text: str, intent: str | None, kind: str, continues: int | None = None) -> dict[str, Any]:
    return {"text": text, "category": intent, "intent": intent, "kind": kind, "reference": None, "continues": continues}


def build(seed: int = 5, n: int = 300) -> list[dict[str, Any]]:
    """``n`` conversations in ``conversations.jsonl``'s schema; the same seed and ``n`` give the same list."""
    rng = random.Random(seed)
    pool = _test_pool()
    intents = list(pool)
    short = {i: sorted(qs, key=lambda q: (len(q.split()), q))[: max(3, len(qs) // 4)] for i, qs in pool.items()}

    # Round-robin over the intents in a shuffled order: every intent opens n // 77 or one more.
    shuffled = {intent: rng.sample(queries, len(queries)) for intent, queries in pool.items()}
    order = rng.sample(intents, len(intents))
    firsts = [(shuffled[i][r], i) for r in range(max(map(len, pool.values()))) for i in order if r < len(shuffled[i])]
    if n > len(firsts):
        raise ValueError(f"n={n}: only {len(firsts)} test.csv queries can open a conversation")
    firsts = firsts[:n]
    rng.shuffle(firsts)

    def follow_up(turns: list[dict[str, Any]], topic: int) -> dict[str, Any]:
        current, previous = turns[topic], turns[-1]
        used = {t["text"] for t in turns}
        # No action / information split in Banking77: a confirmation may follow any intent.
        kind = draw_kind(rng, previous["kind"], confirm_allowed=True)
        if kind in CONTEXT_KINDS:
            lists = {"confirm": CONFIRM, "clarify": CLARIFY, "anaphoric": GENERIC_ANAPHORIC}
            text = rng.choice([t for t in lists[kind][SPLIT] if t not in used])
            return _turn(text, current["intent"], kind, continues=topic)
        if kind == "out_of_scope":
            return _turn(rng.choice([t for t in OUT_OF_SCOPE_REQUESTS[SPLIT] if t not in used]), None, kind)
        if kind == "same_category":
            return _turn(rng.choice([q for q in pool[current["intent"]] if q not in used]), current["intent"], kind)
        intent = rng.choice([i for i in intents if i != current["intent"]])
        candidates = short[intent] if rng.random() < SHORT_SWITCH_SHARE else pool[intent]
        query = rng.choice([q for q in candidates if q not in used])
        prefix = "" if rng.random() < NO_PREFIX_SHARE else rng.choice(SWITCH_PREFIXES[SPLIT])
        return _turn(_with_prefix(prefix, query), intent, kind)

    conversations: list[dict[str, Any]] = []
    for number, (query, intent) in enumerate(firsts, start=1):
        turns = [_turn(query, intent, "first")]
        topic = 0  # the last self-contained in-scope turn: what context-dependent turns continue
        for _ in range(rng.randint(1, 3)):
            turn = follow_up(turns, topic)
            turns.append(turn)
            if turn["kind"] in ("same_category", "switch"):
                topic = len(turns) - 1
        conversations.append({"id": f"b77-{number:04d}", "split": SPLIT, "turns": turns})
    return conversations


# -- the classifier ---------------------------------------------------------------------------


def training_rows(limit: int | None = None) -> tuple[Rows, Rows]:
    """``(fit, calibration)`` from train.csv: every ``HELD_OUT_EVERY``-th row calibrates; ``limit`` thins the file evenly."""
    rows = read_rows(BANKING77 / "train.csv")
    if limit is not None:  # train.csv is grouped by intent: an even stride keeps every intent in a small run
        rows = rows[:: -(-len(rows) // (limit * ROWS_PER_CONVERSATION))]
    fit = [r for i, r in enumerate(rows) if i % HELD_OUT_EVERY != 0]
    return fit, [r for i, r in enumerate(rows) if i % HELD_OUT_EVERY == 0]


def classifier_for(workdir: Path, limit: int | None = None) -> Any:
    """The Banking77 classifier, trained once into ``workdir`` (a ``--limit`` run keeps its own, so it is never reused for a full one)."""
    from classifiers import EmbeddingClassifier

    path = workdir / ("classifier" if limit is None else f"classifier-limit-{limit}")
    if (path / "manifest.json").exists():
        return EmbeddingClassifier.load(path)
    fit, held_out = training_rows(limit)
    clf = EmbeddingClassifier(fine_tune_epochs=0)
    clf.fit([t for t, _ in fit], [c for _, c in fit])
    # A thinned (--limit) fit may miss an intent; calibrate accepts only fitted classes.
    held_out = [(t, c) for t, c in held_out if c in set(clf.classes_.tolist())]
    out_of_scope = OUT_OF_SCOPE_REQUESTS["dev"]  # the holdout half is the conversations' wording
    texts = [t for t, _ in held_out] + out_of_scope
    clf.calibrate(texts, [c for _, c in held_out] + [None] * len(out_of_scope))
    print(f"      fitted on {len(fit)} train.csv rows ({len(clf.classes_)} intents); calibrated on {len(held_out)} held-out rows"
          f" + {len(out_of_scope)} out-of-scope requests: accuracy {clf.calibration_accuracy_:.3f},"
          f" edge recall {clf.calibration_edge_recall_:.3f}, threshold {clf.threshold_:.3f}")  # fmt: skip
    clf.save(path)
    return clf


# -- the measurement --------------------------------------------------------------------------


def routing(
    conversations: list[dict[str, Any]], classifier: Any, switch_confidence: float, detectors: dict[str, Any] | None = None
) -> dict[str, Any]:
    """Per-kind figures for last-message and in-context routing (and, per ``detectors`` entry, in
    context with that learned follow-up detector beside the rule), from one classification of each turn."""
    from router import resolve_topics

    known = {str(c) for c in classifier.classes_}
    own = own_predictions(conversations, classifier)
    modes = {
        "last_message": lambda turns, predictions: predictions,  # a prediction has .category, as a topic does
        "in_context": lambda turns, predictions: resolve_topics(turns, predictions, switch_confidence=switch_confidence),
    }
    for mode, detector in (detectors or {}).items():
        modes[mode] = lambda turns, predictions, d=detector: resolve_topics(
            turns, predictions, switch_confidence=switch_confidence, learned=d.is_follow_up
        )
    return {
        "conversations": len(conversations),
        "settings": {"switch_confidence": switch_confidence},
        "classifier": {"classes": len(known), "threshold": classifier.threshold_, "proba_weight": classifier.proba_weight_},
        **{mode: routing_figures(conversations, route_turns(conversations, own, resolve), known) for mode, resolve in modes.items()},
    }  # fmt: skip


LEARNED_MODES = ("in_context_learned_banking", "in_context_learned")
"""The headline's routing, first found: a detector trained with this deployment's own questions, then the Bitext one."""


def banking_detector(classifier: Any, limit: int | None = None) -> Any:
    """A follow-up detector as a Banking77 deployment would train it: its classifier's own training
    questions as the self-contained class, and the follow-up and out-of-scope wording of the Bitext
    benchmark's *dev* and *test* halves only (these conversations use the holdout half: unseen)."""
    from evals.make_conversations import ANAPHORIC, CLARIFY, CONFIRM, GENERIC_ANAPHORIC
    from router import FollowUpDetector

    halves = ("dev", "test")
    follow = [t for h in halves for t in (*CONFIRM[h], *CLARIFY[h], *GENERIC_ANAPHORIC[h])]
    follow += [t for h in halves for lists in ANAPHORIC.values() for t, _ in lists[h]]
    outside = [t for h in halves for t in OUT_OF_SCOPE_REQUESTS[h]]
    fit, _ = training_rows(limit)
    contained = [t for t, _ in fit][:: max(1, len(fit) // 3000)]

    def embed(texts: list[str]) -> list[Any]:
        return [p.embedding for p in classifier.classify_many(texts)]

    examples = {"follow_up": embed(follow), "out_of_scope": embed(outside), "self_contained": embed(contained)}
    return FollowUpDetector.fit(examples, encoder_sha256=classifier.encoder_sha256_)


def headline(figures: dict[str, Any]) -> dict[str, Any]:
    """The ``banking77_*`` keys merged into the results file (the rule alone: ``*_rule``)."""
    mine = next((m for m in LEARNED_MODES if m in figures), "in_context")
    context, last = figures[mine], figures["last_message"]
    return {
        "banking77_followup_routing_accuracy": context["followup_accuracy"],
        "banking77_followup_routing_accuracy_rule": figures["in_context"]["followup_accuracy"],
        "banking77_switch_recall_rule": figures["in_context"]["switch_recall"],
        "banking77_followup_routing_accuracy_last_message": last["followup_accuracy"],
        "banking77_switch_recall": context["switch_recall"],
        "banking77_first_turn_routing_accuracy": context["first_turn_accuracy"],
        "banking77_context_dependent_accuracy": context["context_dependent_accuracy"],
        "banking77_headline_mode": mine,
        "banking77_routing": figures,
        "banking77_conversations": figures["conversations"],
    }


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--limit", type=int, default=None, help="smoke run: N conversations, at most N*20 training rows")
    parser.add_argument("--workdir", type=Path, default=WORKDIR)
    parser.add_argument("--results", type=Path, default=RESULTS)
    parser.add_argument("--followup-detector", type=Path, default=Path(".conversations") / "followup_detector.npz",
                        help="the Bitext-trained FollowUpDetector (make eval-followup-writers), measured here if it fits this classifier's encoder")
    args = parser.parse_args(argv)
    if args.limit is not None and args.limit < 1:
        parser.error("--limit must be at least 1")
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    started = time.perf_counter()
    from router import RouterConfig

    conversations = build()[: args.limit]
    print(f"[1/2] Banking77 classifier ({args.workdir})")
    args.workdir.mkdir(parents=True, exist_ok=True)
    classifier = classifier_for(args.workdir, args.limit)
    print(f"[2/2] routing {len(conversations)} conversations (every turn), last message vs in context")
    from router import FollowUpDetector

    detectors = {"in_context_learned_banking": banking_detector(classifier, args.limit)}
    if args.followup_detector.exists():
        bitext = FollowUpDetector.load(args.followup_detector)
        if bitext.fits(classifier):
            detectors["in_context_learned"] = bitext
        else:
            print(f"      {args.followup_detector} was trained for another encoder: not measured here")
    figures = routing(conversations, classifier, RouterConfig().conversation.switch_confidence, detectors)
    for mode in ("last_message", "in_context", *detectors):
        f = figures[mode]
        print(f"      {mode:<27} follow-ups {_fmt(f['followup_accuracy'])}  context-dependent {_fmt(f['context_dependent_accuracy'])}"
              f"  switch recall {_fmt(f['switch_recall'])}  first turns {_fmt(f['first_turn_accuracy'])}")  # fmt: skip
        print("      " + " " * 27 + "  ".join(f"{k} {_fmt(v['accuracy'])} ({v['turns']})" for k, v in f["by_kind"].items()))
    figures["minutes"] = (time.perf_counter() - started) / 60
    merge_figures(args.results, headline(figures))
    print(f"merged banking77_* into {args.results}")


def _fmt(value: float | None) -> str:
    return "-" if value is None else f"{value:.3f}"


if __name__ == "__main__":
    main()
