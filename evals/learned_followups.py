"""A learned follow-up detector against the word rule, on the *dev* conversations only (``make eval-learned-followups``).

``router._conversation.context_dependent`` decides from word lists whether a turn leans on its
conversation. It routes 0.97 of the dev follow-ups right but 0.90 of the test ones, whose wording
it never saw: the obvious next step is a detector learned from examples, which might carry over to
new wording better. This measures that on dev alone (the test conversations stay unseen):

* examples: the dev conversations' context-dependent turns (confirm, clarify, anaphoric) as
  positives; as negatives 2,749 Bitext instructions the demo's classifier never trains on
  (``bucket < 60``) and the dev half of the out-of-scope requests;
* a logistic regression (balanced classes) over the turn's sentence embedding (the one the
  request's classification already computed, so no extra encoder run), over word features (the
  rule's verdict, the turn's length, the classifier's confidence in the turn alone), or both;
* cross-validated with the *wording* held out: texts are hashed into five folds, so every dev turn
  is judged by a model that never saw its text (folding by conversation would leak, since dev
  conversations reuse the same hand-written turns). The rule cannot be cross-validated this way
  (its lists were written from dev), so its dev figure is in-sample, an upper bound.

Each variant replaces the rule inside :func:`router.resolve_topics` (and, as "or", is added to
it); dev follow-up accuracy, switch recall and the out-of-scope turns' accuracy are reported
beside the rule's, in ``learned_followups_dev`` of ``evals/results/conversations.json``.
"""

from __future__ import annotations

import argparse
import hashlib
import math
import re
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from evals.conversation_eval import CONTEXT_KINDS, RESULTS, classifier_for, load_conversations, route_turns, routing_figures, routing_summary
from evals.figures import merge_figures

_WORD = re.compile(r"[A-Za-z0-9']+")
FOLDS = 5
THRESHOLDS = (0.5, 0.7, 0.9)


def _fold(text: str) -> int:
    return int(hashlib.sha256(f"followup-fold:{text}".encode()).hexdigest()[:8], 16) % FOLDS


def _word_features(text: str, prediction: Any) -> list[float]:
    """The rule's verdict, the turn's length in words, and how sure the classifier is of the turn alone."""
    from router import context_dependent

    return [float(context_dependent(text)), math.log1p(len(_WORD.findall(text))), float(prediction.confidence)]


def main(argv: list[str] | None = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--workdir", type=Path, default=Path(".conversations"))
    parser.add_argument("--results", type=Path, default=RESULTS)
    args = parser.parse_args(argv)
    from sklearn.linear_model import LogisticRegression

    from evals.demo import bucket, load_bitext
    from evals.make_conversations import OUT_OF_SCOPE_REQUESTS
    from router import context_dependent, resolve_topics

    args.workdir.mkdir(parents=True, exist_ok=True)
    classifier = classifier_for(args.workdir)
    known = {str(c) for c in classifier.classes_}
    dev = [c for c in load_conversations() if c["split"] == "dev"]
    positives = sorted({t["text"] for c in dev for t in c["turns"] if t["kind"] in CONTEXT_KINDS})
    negatives = sorted({r["instruction"] for r in load_bitext() if bucket(r["instruction"]) < 60} | set(OUT_OF_SCOPE_REQUESTS["dev"]))
    texts = sorted({t["text"] for c in dev for t in c["turns"]} | set(positives) | set(negatives))
    predictions = dict(zip(texts, classifier.classify_many(texts), strict=True))
    own = {c["id"]: [predictions[t["text"]] for t in c["turns"]] for c in dev}
    print(f"dev: {len(dev)} conversations; {len(positives)} context-dependent texts, {len(negatives)} self-contained")

    def features(batch: list[str], kind: str) -> np.ndarray:
        rows = []
        for text in batch:
            row: list[float] = []
            if kind in ("embedding", "both"):
                row.extend(predictions[text].embedding.tolist())
            if kind in ("words", "both"):
                row.extend(_word_features(text, predictions[text]))
            rows.append(row)
        return np.asarray(rows, dtype=np.float64)

    def routed_with(dependent: Callable[[str], bool]) -> dict[str, Any]:
        return routing_summary(routing_figures(dev, route_turns(dev, own, lambda turns, preds: resolve_topics(turns, preds, dependent=dependent)), known))

    results: dict[str, Any] = {"rule_in_sample": routed_with(context_dependent)}
    examples = positives + negatives
    labels = np.array([1] * len(positives) + [0] * len(negatives))
    folds = np.array([_fold(t) for t in examples])
    for kind in ("embedding", "words", "both"):
        x = features(examples, kind)
        probability: dict[str, float] = {}
        for fold in range(FOLDS):
            model = LogisticRegression(C=1.0, class_weight="balanced", max_iter=2000).fit(x[folds != fold], labels[folds != fold])
            held = [t for t in texts if _fold(t) == fold]
            probability.update(zip(held, model.predict_proba(features(held, kind))[:, 1].tolist(), strict=True))
        for threshold in THRESHOLDS:
            learned = lambda text, t=threshold: probability[text] >= t  # noqa: E731
            either = lambda text, t=threshold: probability[text] >= t or context_dependent(text)  # noqa: E731
            results[f"{kind}_{threshold}"] = routed_with(learned) | {
                "held_out_recall": float(np.mean([probability[t] >= threshold for t in positives])),
                "bitext_false_positive_rate": float(np.mean([probability[t] >= threshold for t in negatives])),
                "or_rule": routed_with(either),
            }
    print(f"{'variant':18s} follow-up  context  switch  out-of-scope  held-out recall  | or rule: follow-up  switch")
    for name, r in results.items():
        extra = (f"  {r['held_out_recall']:15.2f}  | {r['or_rule']['followup_accuracy']:8.3f}  {r['or_rule']['switch_recall']:6.3f}"
                 if "or_rule" in r else "")  # fmt: skip
        print(f"{name:18s} {r['followup_accuracy']:9.3f}  {r['context_dependent_accuracy']:7.3f}  {r['switch_recall']:6.3f}"
              f"  {r['out_of_scope_accuracy']:12.3f}{extra}")  # fmt: skip
    merge_figures(args.results, {"learned_followups_dev": results})
    print(f"written to {args.results} (learned_followups_dev)")
    return results


if __name__ == "__main__":
    main()
