"""Conversation benchmark (``make eval-conversations``): route whole conversations, not their last line.

The benchmark is ``evals/corpora/conversations.jsonl`` and ``conversations_holdout{,2,3}.jsonl``
(``evals/make_conversations.py`` says how they were built: Bitext first questions from the replay
pool the demo's classifier never trains on, then hand-written follow-ups, switches to other Bitext
categories and out-of-scope requests; each turn labelled with the category a person would give it
in context). No label is read while routing. Two measurements, both for last-message routing and
for conversation-aware routing:

1. **routing**, every turn of all conversations: the category chosen in context (None = the
   cloud) against the label, per turn kind; categories the classifier does not know (the demo's
   out-of-scope ones) count as right when sent to the cloud. Reported per wording split: *dev*
   (where the rule was written), *test* (its misses shaped the rule's second version, so it is
   development data too), *holdout*, follow-up wording written after the rule was committed by
   someone who never read it (its misses were read on 2026-12-04, so it is development data now),
   *holdout2*, written after that by another writer who read neither the rule nor its results
   (the learned detector's setting was then read on it, so it is development data too), and
   *holdout3*, written on 2026-12-04 (night) by a fifth writer who read neither the rule, the
   detector nor any result: the headline figures are holdout3's;
2. **serving**, ``--serve`` holdout3 conversations replayed through ``router.Client`` turn by turn as
   ``make demo``'s phase 2 (its classifier, the shipped adapter, PAYMENT private, the stand-in
   cloud answering each turn with its reference): each assistant message sent back is the answer
   the router served. Local share, the guard's verdict and the similarity to the reference, for
   first turns and follow-ups apart. Up to five ways, each from the same empty live evidence: the
   router as it was (each turn routed alone, the local model given the whole history), in context
   with the word rule (``follow_ups = "inherit"``, ``local.history = "topic"``), the same with the
   learned follow-up detector beside the rule (when ``make eval-followup-writers`` wrote one), in
   context with the whole history, and that again with a small context window (``--pruned-ctx``
   tokens), so pruned and whole history are compared on the same turns.

A follow-up's reference is the Bitext answer of the intent it continues: the follow-ups are
written so that this answer is a right one (confirmations, requests to explain the steps again,
"can I do that from my phone?"). It measures whether the answer stays on topic and useful, not a
perfect answer to the follow-up's exact wording; read the answers printed at the end.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import time
from collections import Counter, defaultdict
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from tqdm import tqdm

from evals import make_conversations

CORPUS, HOLDOUT_CORPUS, HOLDOUT2_CORPUS = make_conversations.OUT, make_conversations.HOLDOUT_OUT, make_conversations.HOLDOUT2_OUT
CORPORA = tuple(path for path, _, _ in make_conversations.CORPORA)  # every wording half's file
SPLITS = ("dev", "test", "holdout", "holdout2", "holdout3")
# The only wording neither the rule nor the learned detector was shaped on: holdout2's figures chose
# nothing, but were read before holdout3 was written, and the detector now trains on holdout2.
HEADLINE_SPLIT = "holdout3"
RESULTS = Path(__file__).resolve().parent / "results" / "conversations.json"
FOLLOW_UP_KINDS = ("confirm", "clarify", "anaphoric", "same_category", "switch", "out_of_scope")
SWITCH_KINDS = ("switch", "out_of_scope")
CONTEXT_KINDS = ("confirm", "clarify", "anaphoric")


def load_conversations(path: Path = CORPUS) -> list[dict[str, Any]]:
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]


def classifier_for(workdir: Path) -> Any:
    """``make demo``'s classifier (same split and settings), trained once into ``workdir``."""
    from classifiers import EmbeddingClassifier
    from evals.demo import load_bitext, split, train_classifier

    path = workdir / "classifier"
    if (path / "manifest.json").exists():
        return EmbeddingClassifier.load(path)
    train, calibration, _ = split(load_bitext())
    print(f"training the demo's classifier on {len(train)} Bitext queries")
    return train_classifier(train, calibration, path)


# -- routing ----------------------------------------------------------------------------------


def own_predictions(conversations: Sequence[dict[str, Any]], classifier: Any) -> dict[str, list[Any]]:
    """Each turn classified alone, once (both routings start from these), per conversation id."""
    texts = [t["text"] for c in conversations for t in c["turns"]]
    predictions = iter(classifier.classify_many(texts))
    return {c["id"]: [next(predictions) for _ in c["turns"]] for c in conversations}


def route_turns(
    conversations: Sequence[dict[str, Any]],
    own: dict[str, list[Any]],
    resolve: Callable[[list[tuple[int, str]], list[Any]], list[Any]],
) -> list[list[str | None]]:
    """The category each turn is routed with (None: the cloud), per conversation."""
    routed = []
    for conversation in conversations:
        turns = [(2 * i, t["text"]) for i, t in enumerate(conversation["turns"])]  # user turns sit at even indices
        routed.append([topic.category for topic in resolve(turns, own[conversation["id"]])])
    return routed


def routing_figures(conversations: Sequence[dict[str, Any]], routed: Sequence[Sequence[str | None]], known: set[str]) -> dict[str, Any]:
    """Accuracy in context per turn kind; a switch counts as handled when routed to its new category or the cloud."""
    right: dict[str, list[bool]] = defaultdict(list)
    switch_handled: list[bool] = []
    for conversation, categories in zip(conversations, routed, strict=True):
        for turn, category in zip(conversation["turns"], categories, strict=True):
            truth = turn["category"] if turn["category"] in known else None
            right[turn["kind"]].append(category == truth)
            if turn["kind"] in SWITCH_KINDS:
                switch_handled.append(category == truth or category is None)
    followups = [ok for kind in FOLLOW_UP_KINDS for ok in right[kind]]
    context = [ok for kind in CONTEXT_KINDS for ok in right[kind]]
    mean = lambda xs: sum(xs) / len(xs) if xs else None  # noqa: E731
    return {
        "turns": sum(len(v) for v in right.values()),
        "first_turn_accuracy": mean(right["first"]),
        "followup_accuracy": mean(followups),
        "context_dependent_accuracy": mean(context),
        "switch_recall": mean(switch_handled),
        "by_kind": {kind: {"turns": len(v), "accuracy": mean(v)} for kind, v in sorted(right.items())},
    }


def routing_summary(figures: dict[str, Any]) -> dict[str, Any]:
    """The four figures a routing variant is compared on (from :func:`routing_figures`)."""
    return {"followup_accuracy": figures["followup_accuracy"], "context_dependent_accuracy": figures["context_dependent_accuracy"],
            "switch_recall": figures["switch_recall"], "out_of_scope_accuracy": figures["by_kind"]["out_of_scope"]["accuracy"]}  # fmt: skip


def routing_step(
    conversations: list[dict[str, Any]], classifier: Any, settings: dict[str, Any], detector: Any = None
) -> dict[str, Any]:
    """Every turn routed last-message, in context (the word rule), in context with ``detector`` beside
    the rule (when given), and the embedding blends, per wording split."""
    from router import resolve_topics

    def last_message(turns: list[tuple[int, str]], own: list[Any]) -> list[Any]:
        return own  # a prediction has .category, as a topic does

    def in_context(turns: list[tuple[int, str]], own: list[Any]) -> list[Any]:
        return resolve_topics(turns, own, **settings)

    def in_context_learned(turns: list[tuple[int, str]], own: list[Any]) -> list[Any]:
        return resolve_topics(turns, own, learned=detector.is_follow_up, **settings)

    known = {str(c) for c in classifier.classes_}
    own = own_predictions(conversations, classifier)
    figures: dict[str, Any] = {}
    for split in SPLITS:
        chosen = [c for c in conversations if c["split"] == split]
        figures[split] = {
            "conversations": len(chosen),
            "last_message": routing_figures(chosen, route_turns(chosen, own, last_message), known),
            "in_context": routing_figures(chosen, route_turns(chosen, own, in_context), known),
        }
        if detector is not None:
            figures[split]["in_context_learned"] = routing_figures(chosen, route_turns(chosen, own, in_context_learned), known)
        for weight in BLEND_WEIGHTS:  # the alternative the rule was chosen over
            blended = routing_figures(chosen, route_turns(chosen, own, blend(classifier, weight)), known)
            figures[split][f"blend_{weight}"] = {k: v for k, v in blended.items() if k != "by_kind"} | {
                "out_of_scope_accuracy": blended["by_kind"].get("out_of_scope", {}).get("accuracy")
            }
    return figures


BLEND_WEIGHTS = (0.5, 1.0)


def blend(classifier: Any, weight: float, decay: float = 0.5) -> Callable[[list[tuple[int, str]], list[Any]], list[Any]]:
    """The variant measured against the rule: each turn classified as its embedding plus the earlier
    turns', recency-weighted (``weight * decay**k`` for the turn ``k + 1`` back), with no follow-up detector."""

    def resolve(turns: list[tuple[int, str]], own: list[Any]) -> list[Any]:
        out = []
        for t, prediction in enumerate(own):
            mixed = prediction.embedding.copy()
            for k, earlier in enumerate(reversed(own[:t])):
                mixed = mixed + weight * decay**k * earlier.embedding
            out.append(classifier.classify_embedding(mixed) if t else prediction)
        return out

    return resolve


# -- serving ----------------------------------------------------------------------------------


def write_recorded_answers(path: Path, conversations: Sequence[dict[str, Any]]) -> None:
    """The stand-in cloud answers each turn with its reference, looked up by the conversation so far."""
    with path.open("w", encoding="utf-8") as fh:
        for conversation in conversations:
            texts = [t["text"] for t in conversation["turns"]]
            for i, turn in enumerate(conversation["turns"]):
                if turn["reference"] is not None:
                    fh.write(json.dumps({"conversation": texts[: i + 1], "answer": turn["reference"]}) + "\n")


def replay_conversations(client: Any, conversations: Sequence[dict[str, Any]], *, max_tokens: int, desc: str) -> list[dict[str, Any]]:
    """Each conversation turn by turn; the assistant messages sent back are the answers served."""
    from router import APIError

    served = []
    for conversation in tqdm(conversations, unit="conversation", desc=desc):
        messages: list[dict[str, str]] = []
        for position, turn in enumerate(conversation["turns"]):
            messages.append({"role": "user", "content": turn["text"]})
            row = {"conversation": conversation["id"], "position": position, "kind": turn["kind"], "question": turn["text"],
                   "label": turn["category"], "reference": turn["reference"], "earlier": [m["content"] for m in messages[:-1] if m["role"] == "user"]}  # fmt: skip
            try:
                response = client.chat.completions.create(model="gpt-4o", messages=list(messages), max_tokens=max_tokens)
            except APIError as err:
                served.append({**row, "tier": "error", "reason": type(err).__name__, "detail": str(err), "text": None, "private": False})
                messages.append({"role": "assistant", "content": ""})
                continue
            info = response.router
            text = response.choices[0].message.content or ""
            served.append({
                **row, "tier": info.tier, "reason": info.reason.value, "detail": info.detail, "category": info.category,
                "text": text, "private": info.reason.value in ("private_category", "pii_match", "private_handoff"),
                "fallback_reason": info.fallback_reason,
            })  # fmt: skip
            messages.append({"role": "assistant", "content": text})
    return served


def judge(served: list[dict[str, Any]]) -> None:
    """The guard's verdict on every local answer (with its conversation) and its similarity to the reference."""
    from finetune.evaluate import similarity_scores
    from router import LocalConfig

    local = LocalConfig()
    for row in served:
        row["degenerate"] = None
        if row["tier"] == "local" and row["text"] is not None:
            row["degenerate"] = local.new_guard(row["question"], row["earlier"]).check_text(row["text"])
    scored = [r for r in served if r["text"] and r["reference"] is not None]
    for row, sim in zip(scored, similarity_scores([r["text"] for r in scored], [r["reference"] for r in scored]), strict=True):
        row["similarity"] = sim


def attainable_local_share(rows: Sequence[dict[str, Any]], local_categories: Sequence[str], private_categories: Sequence[str]) -> float | None:
    """The local share a router that put every turn where its label says would reach: the ceiling the mix allows.

    A conversation's follow-ups include out-of-scope questions and switches to categories the local
    model does not serve, by the benchmark's design, so even a perfect router answers fewer of them
    locally than first turns. Labels are read here, for the report only; routing never sees them.
    """
    open_rows = [r for r in rows if r["label"] not in private_categories]
    return sum(r["label"] in local_categories for r in open_rows) / len(open_rows) if open_rows else None


def serving_figures(served: Sequence[dict[str, Any]]) -> dict[str, Any]:
    """Local share and quality for first turns and follow-ups apart (private turns shown apart)."""
    from evals.demo import LOCAL_CATEGORIES, PRIVATE_CATEGORIES

    mean = lambda xs: sum(xs) / len(xs) if xs else None  # noqa: E731

    def group(rows: list[dict[str, Any]]) -> dict[str, Any]:
        open_rows = [r for r in rows if not r["private"]]
        local = [r for r in open_rows if r["tier"] == "local"]
        return {
            "turns": len(rows),
            "private": len(rows) - len(open_rows),
            "local_share": len(local) / len(open_rows) if open_rows else None,
            "attainable_local_share": attainable_local_share(rows, LOCAL_CATEGORIES, PRIVATE_CATEGORIES),
            "local_similarity": mean([r["similarity"] for r in local if "similarity" in r]),
            "cloud_similarity": mean([r["similarity"] for r in open_rows if r["tier"] == "cloud" and "similarity" in r]),
            "local_degenerate_rate": mean([r["degenerate"] is not None for r in local]),
            "local_rejected_to_cloud": sum(1 for r in open_rows if r["tier"] == "cloud" and (r.get("fallback_reason") or "").startswith("degenerate")),
            "sticky_cloud": sum(r["reason"] == "sticky_cloud" for r in rows),
            "errors": sum(r["tier"] == "error" for r in rows),
            "reasons": dict(Counter(r["reason"] for r in rows).most_common()),
        }

    first = [r for r in served if r["position"] == 0]
    followups = [r for r in served if r["position"] > 0]
    return {
        "first_turns": group(first),
        "followups": group(followups),
        "context_dependent_followups": group([r for r in followups if r["kind"] in CONTEXT_KINDS]),
    }


def serve_step(
    conversations: list[dict[str, Any]], classifier_path: Path, workdir: Path, *, answer_tokens: int, pruned_ctx: int,
    only: Sequence[str] = (), detector_path: Path | None = None,
) -> tuple[dict[str, Any], dict[str, list[dict[str, Any]]]]:
    from evals.demo import LOCAL_CATEGORIES, PRIVATE_CATEGORIES, register_shipped_adapter
    from evals.standin_cloud import StandinCloud
    from router import Client, RouterConfig

    answers = workdir / "recorded-answers.jsonl"
    write_recorded_answers(answers, conversations)
    registry = workdir / "registry"
    register_shipped_adapter(registry)
    modes = {  # the router as it was (each turn alone, whole history to the local model); as it is; and two variants
        "last_message": {"conversation": {"follow_ups": "last_message"}, "local": {"history": "full"}},
        "in_context": {},
        **({"in_context_learned": {"conversation": {"followup_detector": detector_path}}} if detector_path is not None else {}),
        "in_context_full_history": {"local": {"history": "full"}},
        "in_context_full_history_pruned": {"local": {"history": "full", "n_ctx": pruned_ctx}},
    }
    modes = {name: modes[name] for name in only} if only else modes
    served: dict[str, list[dict[str, Any]]] = {}
    with StandinCloud(answers=answers, record=workdir / "standin-requests.jsonl") as cloud:
        for mode, overrides in modes.items():
            log_path = (workdir / f"traffic-{mode}.sqlite3").resolve()
            for stale in workdir.glob(f"traffic-{mode}.sqlite3*"):
                stale.unlink()
            evidence = workdir / f"evidence-{mode}"  # each mode starts from the same evidence: none gathered live
            shutil.rmtree(evidence, ignore_errors=True)
            local = {"registry_path": registry, "default_max_tokens": answer_tokens, **overrides.get("local", {})}
            config = RouterConfig(
                models=cloud.models,
                cloud={"default_model": "gpt-4o"}, classifier={"path": classifier_path},
                routing={"local_categories": LOCAL_CATEGORIES, "private_categories": PRIVATE_CATEGORIES},
                quality={"evidence_dir": evidence}, warmup="eager", local=local, log={"path": log_path},
                conversation=overrides.get("conversation", {}),
            )  # fmt: skip
            with Client(config) as client:
                served[mode] = replay_conversations(client, conversations, max_tokens=answer_tokens, desc=mode)
            print(f"      traffic log: {log_path}")
    for rows in served.values():
        judge(rows)
    figures = {mode: serving_figures(rows) for mode, rows in served.items()}
    if "in_context_full_history" in served and "in_context_full_history_pruned" in served:
        figures["pruning"] = pruning_figures(served["in_context_full_history"], served["in_context_full_history_pruned"], pruned_ctx)
    return figures, served


def pruning_figures(full: list[dict[str, Any]], pruned: list[dict[str, Any]], n_ctx: int) -> dict[str, Any]:
    """The same follow-ups answered locally with the whole history and with a pruned one."""
    full_by_turn = {(r["conversation"], r["position"]): r for r in full}
    pairs = [
        (full_by_turn[(r["conversation"], r["position"])], r)
        for r in pruned
        if "dropped" in (r.get("detail") or "") and (r["conversation"], r["position"]) in full_by_turn
    ]
    both_local = [(f, p) for f, p in pairs if f["tier"] == p["tier"] == "local" and "similarity" in f and "similarity" in p]
    mean = lambda xs: sum(xs) / len(xs) if xs else None  # noqa: E731
    return {
        "pruned_n_ctx": n_ctx,
        "turns_pruned": len(pairs),
        "pruned_turns_answered_locally": sum(p["tier"] == "local" for _, p in pairs),
        "both_local": len(both_local),
        "full_context_similarity": mean([f["similarity"] for f, _ in both_local]),
        "pruned_context_similarity": mean([p["similarity"] for _, p in both_local]),
    }


# -- the report -------------------------------------------------------------------------------


def summary(routing: dict[str, Any], serving: dict[str, Any] | None) -> dict[str, Any]:
    """The issue's headline keys, from ``HEADLINE_SPLIT`` (the wording no version of the rule saw), for
    the router with the learned follow-up detector when one was measured (``*_rule``: the rule alone)."""
    held = routing[HEADLINE_SPLIT]
    mine = "in_context_learned" if "in_context_learned" in held else "in_context"
    out: dict[str, Any] = {
        "headline_split": HEADLINE_SPLIT,
        "headline_mode": mine,
        "followup_routing_accuracy": held[mine]["followup_accuracy"],
        "followup_routing_accuracy_rule": held["in_context"]["followup_accuracy"],
        "followup_routing_accuracy_last_message": held["last_message"]["followup_accuracy"],
        "switch_recall": held[mine]["switch_recall"],
        "switch_recall_rule": held["in_context"]["switch_recall"],
        "switch_recall_last_message": held["last_message"]["switch_recall"],
        "first_turn_routing_accuracy": held[mine]["first_turn_accuracy"],
        "followup_routing_accuracy_holdout2": routing["holdout2"]["in_context"]["followup_accuracy"],
        "followup_routing_accuracy_holdout2_last_message": routing["holdout2"]["last_message"]["followup_accuracy"],
        "followup_routing_accuracy_holdout": routing["holdout"]["in_context"]["followup_accuracy"],
        "followup_routing_accuracy_holdout_last_message": routing["holdout"]["last_message"]["followup_accuracy"],
        "followup_routing_accuracy_test": routing["test"]["in_context"]["followup_accuracy"],
        "followup_routing_accuracy_dev": routing["dev"]["in_context"]["followup_accuracy"],
    }
    if serving is not None:
        served_mode = "in_context_learned" if "in_context_learned" in serving else "in_context"
        ctx, last = serving[served_mode], serving["last_message"]
        out["followup_local_share_rule"] = serving["in_context"]["followups"]["local_share"]
        out["followup_local_similarity_rule"] = serving["in_context"]["followups"]["local_similarity"]
        first_share = ctx["first_turns"]["local_share"] or 0.0
        out |= {
            "first_turn_local_share": ctx["first_turns"]["local_share"],
            "followup_local_share": ctx["followups"]["local_share"],
            "followup_local_share_ratio": (ctx["followups"]["local_share"] or 0.0) / first_share if first_share else None,
            "followup_local_share_last_message": last["followups"]["local_share"],
            # What the same ratio is for a router that routes every turn to its label (the mix's ceiling).
            "first_turn_local_share_attainable": ctx["first_turns"]["attainable_local_share"],
            "followup_local_share_attainable": ctx["followups"]["attainable_local_share"],
            "followup_local_share_ratio_attainable": _ratio(ctx["followups"]["attainable_local_share"], ctx["first_turns"]["attainable_local_share"]),
            "followup_degenerate_rate": ctx["followups"]["local_degenerate_rate"],
            "first_turn_local_similarity": ctx["first_turns"]["local_similarity"],
            "followup_local_similarity": ctx["followups"]["local_similarity"],
            "followup_local_similarity_last_message": last["followups"]["local_similarity"],
        }
    return out


def print_answers(served: list[dict[str, Any]], count: int) -> None:
    """Local follow-up answers as a user reads them."""
    rows = [r for r in served if r["position"] > 0 and r["tier"] == "local"][:count]
    for r in rows:
        print(f"\n--- {r['conversation']} turn {r['position']} ({r['kind']}, label {r['label']}, routed {r['category']}, "
              f"similarity {r.get('similarity', float('nan')):.2f}, guard {r['degenerate'] or 'ok'})")  # fmt: skip
        print(f"  earlier: {r['earlier'][-1][:100]!r}")
        print(f"  user:    {r['question'][:100]!r}")
        print(f"  answer:  {(r['text'] or '')[:300]!r}")


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--serve", type=int, default=60, help="holdout conversations replayed through the router (0: routing only)")
    parser.add_argument("--answer-tokens", type=int, default=256)
    parser.add_argument("--pruned-ctx", type=int, default=640, help="local window of the pruned-context replay")
    parser.add_argument("--show", type=int, default=20, help="local follow-up answers printed")
    parser.add_argument("--modes", nargs="*", default=(), help="serve only these modes (results written only with last_message and in_context among them)")
    parser.add_argument("--followup-detector", type=Path, default=None,
                        help="a FollowUpDetector to measure beside the rule (default: WORKDIR/followup_detector.npz if `make eval-followup-writers` wrote it)")
    parser.add_argument("--workdir", type=Path, default=Path(".conversations"))
    parser.add_argument("--results", type=Path, default=RESULTS)
    args = parser.parse_args(argv)
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    started = time.perf_counter()
    from router import RouterConfig

    args.workdir.mkdir(parents=True, exist_ok=True)
    conversations = [c for path in CORPORA for c in load_conversations(path)]
    classifier = classifier_for(args.workdir)
    defaults = RouterConfig().conversation
    settings = {"switch_confidence": defaults.switch_confidence}
    detector_path = args.followup_detector or args.workdir / "followup_detector.npz"
    detector = None
    if detector_path.exists():
        from router import FollowUpDetector

        detector = FollowUpDetector.load(detector_path)
        if not detector.fits(classifier):
            raise SystemExit(f"{detector_path} was trained for another encoder than {args.workdir / 'classifier'}'s: run make eval-followup-writers")
        settings["followup_detector"] = str(detector_path)
    print(f"[1/2] routing {len(conversations)} conversations (every turn), last message vs in context")
    routing = routing_step(conversations, classifier, {"switch_confidence": settings["switch_confidence"]}, detector)
    for split in SPLITS:
        r = routing[split]
        for mode in ("last_message", "in_context", *(["in_context_learned"] if detector else []), *(f"blend_{w}" for w in BLEND_WEIGHTS)):
            f = r[mode]
            print(f"      {split:<9}{mode:<19} follow-ups {f['followup_accuracy']:.3f}  context-dependent {f['context_dependent_accuracy']:.3f}"
                  f"  switch recall {f['switch_recall']:.3f}  first turns {f['first_turn_accuracy']:.3f}")  # fmt: skip
    serving = served = None
    if args.serve > 0:
        chosen = [c for c in conversations if c["split"] == HEADLINE_SPLIT][: args.serve]
        print(f"[2/2] serving {len(chosen)} {HEADLINE_SPLIT} conversations turn by turn: as before, as now, with the whole history, and pruned to n_ctx={args.pruned_ctx}")
        serving, served = serve_step(
            chosen, args.workdir / "classifier", args.workdir, answer_tokens=args.answer_tokens, pruned_ctx=args.pruned_ctx, only=args.modes,
            detector_path=detector_path.resolve() if detector is not None else None,
        )  # fmt: skip
        for mode in served:
            for part in ("first_turns", "followups"):
                g = serving[mode][part]
                print(f"      {mode:<18}{part:<12} local {g['local_share'] or 0:.0%} (labels allow {g['attainable_local_share'] or 0:.0%}) at similarity {_fmt(g['local_similarity'])},"
                      f" degenerate {_fmt(g['local_degenerate_rate'])}, sticky {g['sticky_cloud']}, private {g['private']}, errors {g['errors']}")  # fmt: skip
        print(f"      pruning: {serving.get('pruning')}")
        shown = "in_context_learned" if "in_context_learned" in served else "in_context"
        print_answers(served[shown] if shown in served else served[next(iter(served))], args.show)
        if not {"last_message", "in_context"} <= set(served):
            return
    result = {
        **summary(routing, serving),
        "settings": settings,
        "routing": routing,
        "serving": serving,
        "served_conversations": args.serve,
        "served_modes": list(served) if served is not None else None,
        "minutes": (time.perf_counter() - started) / 60,
    }
    from evals.figures import merge_figures

    merge_figures(args.results, result)  # keeps the banking77_* keys of `python -m evals.banking_conversations`
    print(f"written to {args.results}")


def _ratio(a: float | None, b: float | None) -> float | None:
    return a / b if a is not None and b else None


def _fmt(value: float | None) -> str:
    return "-" if value is None else f"{value:.3f}"


if __name__ == "__main__":
    main()
