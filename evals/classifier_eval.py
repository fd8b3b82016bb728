"""Banking77 evaluation of ``EmbeddingClassifier``: ``python -m evals.classifier_eval``.

Protocol A: fit on all of train.csv (77 intents), no calibration, accuracy on test.csv.
Protocol B: the 18 intents at sorted positions i with i % 9 in {0, 4} are out of scope and never
fitted; every 10th train row (row index % 10 == 0, file order) is held out for ``calibrate``
(out-of-scope rows labelled None); the rest is fitted. On test.csv: in-scope accuracy (None
counts wrong) and out-of-scope recall (predicted None). Frozen-encoder figures are reported
alongside as the baseline. ``--validation`` replays both protocols inside train.csv (rows with
index % 10 == 5 play test.csv) to choose settings without touching test.csv.

Opt-in out-of-scope exemplars (``exemplar_weight=None``) make ``calibrate`` keep the calibration
set's out-of-scope rows, and protocol B's test queries come from the same 18 intents. Two
recalibrations of protocol B's fitted model show what that is worth: with exemplars, and with the
calibration rows of only 9 of the 18 intents, so that recall can be read separately on intents
it has and has not seen an example of.
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import statistics
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

os.environ.setdefault("HF_HUB_OFFLINE", "1")

from classifiers import EmbeddingClassifier  # noqa: E402 - offline flag must precede model imports

BANKING77 = Path(__file__).resolve().parents[2] / "shared" / "datasets" / "banking77"
RESULTS = Path(__file__).parent / "results" / "classifier.json"

Rows = list[tuple[str, str]]


def read_rows(path: Path) -> Rows:
    with path.open(newline="", encoding="utf-8") as fh:
        return [(row["text"], row["category"]) for row in csv.DictReader(fh)]


def load_split(validation: bool) -> tuple[Rows, Rows]:
    train = read_rows(BANKING77 / "train.csv")
    if not validation:
        return train, read_rows(BANKING77 / "test.csv")
    return [r for i, r in enumerate(train) if i % 10 != 5], [r for i, r in enumerate(train) if i % 10 == 5]


def out_of_scope_intents(rows: Rows) -> set[str]:
    intents = sorted({label for _, label in rows})
    return {name for i, name in enumerate(intents) if i % 9 in (0, 4)}


def protocol_a(train: Rows, test: Rows, params: dict[str, Any]) -> dict[str, Any]:
    start = time.perf_counter()
    model = EmbeddingClassifier(**params).fit([t for t, _ in train], [c for _, c in train])
    fit_minutes = (time.perf_counter() - start) / 60
    predicted = model.predict([t for t, _ in test])
    accuracy = sum(p == c for p, (_, c) in zip(predicted, test, strict=True)) / len(test)
    return {"model": model, "accuracy": accuracy, "fit_minutes": fit_minutes}


def protocol_b(train: Rows, test: Rows, params: dict[str, Any]) -> dict[str, Any]:
    oos = out_of_scope_intents(train)
    fit_rows = [(t, c) for i, (t, c) in enumerate(train) if i % 10 != 0 and c not in oos]
    calibration = [(t, c) for i, (t, c) in enumerate(train) if i % 10 == 0]  # true intents
    start = time.perf_counter()
    model = EmbeddingClassifier(**params).fit([t for t, _ in fit_rows], [c for _, c in fit_rows])
    calibrate(model, calibration, oos)
    fit_minutes = (time.perf_counter() - start) / 60
    scores = score_protocol_b(model, test, oos)
    return {**scores, "fit_minutes": fit_minutes, "model": model, "calibration": calibration}


def calibrate(model: EmbeddingClassifier, rows: Rows, oos: set[str]) -> None:
    """Calibrate on ``rows`` with the out-of-scope intents labelled None."""
    model.calibrate([t for t, _ in rows], [None if c in oos else c for _, c in rows])


def score_protocol_b(model: EmbeddingClassifier, test: Rows, oos: set[str]) -> dict[str, Any]:
    predictions = [model.classify(t) for t, _ in test]
    predicted = [p.category for p in predictions]
    in_scope = [(p, c) for p, (_, c) in zip(predictions, test, strict=True) if c not in oos]
    out_scope = [p.category for p, (_, c) in zip(predictions, test, strict=True) if c in oos]
    return {
        "in_scope_accuracy": sum(p.category == c for p, c in in_scope) / len(in_scope),
        # The ceiling of in-scope accuracy: the best label right, whatever the edge threshold says.
        "in_scope_closed_set_accuracy": sum(p.label == c for p, c in in_scope) / len(in_scope),
        "in_scope_sent_to_edge": sum(p.category is None for p, _ in in_scope) / len(in_scope),
        "oos_recall": sum(p is None for p in out_scope) / len(out_scope),
        "local_share": sum(p is not None for p in predicted) / len(predicted),
        "threshold": model.threshold_,
        "proba_weight": model.proba_weight_,
        "exemplar_weight": model.exemplar_weight_,
        "exemplars": len(model.head_.exemplars),
    }


def exemplar_ablations(model: EmbeddingClassifier, calibration: Rows, test: Rows, oos: set[str]) -> dict[str, float]:
    """Recalibrate copies of protocol B's model with exemplars: of all 18 intents; of 9 of them."""
    with tempfile.TemporaryDirectory() as tmp:
        saved = model.save(Path(tmp) / "b")
        full = EmbeddingClassifier.load(saved).set_params(exemplar_weight=None)
        half = EmbeddingClassifier.load(saved).set_params(exemplar_weight=None)
    calibrate(full, calibration, oos)
    with_exemplars = score_protocol_b(full, test, oos)
    # Drop the calibration rows of every other out-of-scope intent; those intents stay out of scope.
    unseen = set(sorted(oos)[1::2])
    calibrate(half, [(t, c) for t, c in calibration if c not in unseen], oos)
    seen_half = score_protocol_b(half, [(t, c) for t, c in test if c not in unseen], oos - unseen)
    unseen_rows = [(t, c) for t, c in test if c not in oos - unseen]
    unseen_half = score_protocol_b(half, unseen_rows, unseen)
    return {
        "exemplars_in_scope_accuracy": with_exemplars["in_scope_accuracy"],
        "exemplars_oos_recall": with_exemplars["oos_recall"],
        "exemplars_in_scope_sent_to_edge": with_exemplars["in_scope_sent_to_edge"],
        "exemplars_proba_weight": with_exemplars["proba_weight"],
        "exemplars_exemplar_weight": with_exemplars["exemplar_weight"],
        "half_exemplars_in_scope_accuracy": seen_half["in_scope_accuracy"],
        "half_exemplars_seen_intent_oos_recall": seen_half["oos_recall"],
        "half_exemplars_unseen_intent_oos_recall": unseen_half["oos_recall"],
        # The same 9 intents' recall with the model as calibrated by default (no exemplars).
        "no_exemplars_unseen_intent_oos_recall": score_protocol_b(model, unseen_rows, unseen)["oos_recall"],
    }


def single_query_latency_ms(model: EmbeddingClassifier, texts: Sequence[str]) -> dict[str, float]:
    """Save, reload (as the router would) and time ``classify`` one query at a time."""
    with tempfile.TemporaryDirectory() as tmp:
        loaded = EmbeddingClassifier.load(model.save(Path(tmp) / "artifact"))
    for text in texts[:20]:
        loaded.classify(text)
    timings = []
    for text in texts:
        start = time.perf_counter()
        loaded.classify(text)
        timings.append((time.perf_counter() - start) * 1000)
    timings.sort()
    return {"p50": statistics.median(timings), "p90": timings[int(0.9 * (len(timings) - 1))]}


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--validation", action="store_true", help="evaluate on a split of train.csv")
    parser.add_argument("--epochs", type=int, default=None, help="fine-tuning epochs (default: the classifier's)")
    parser.add_argument("--quantize", action="store_true", help="serve the int8 ONNX encoder")
    parser.add_argument("--n-jobs", type=int, default=None, help="fitting threads (1 is faster on a busy machine)")
    parser.add_argument("--skip-baseline", action="store_true", help="do not fit the frozen-encoder baseline")
    parser.add_argument("--out", type=Path, default=None, help=f"JSON output (default {RESULTS}, not in --validation)")
    args = parser.parse_args(argv)

    params: dict[str, Any] = {"quantize": True} if args.quantize else {}
    if args.n_jobs is not None:
        params["n_jobs"] = args.n_jobs
    if args.epochs is not None:
        params["fine_tune_epochs"] = args.epochs
    train, test = load_split(args.validation)
    print(f"Banking77 ({'validation split of train' if args.validation else 'test.csv'}): "
          f"{len(train)} train rows, {len(test)} evaluation rows; params {params}", flush=True)

    results: dict[str, Any] = {"split": "validation" if args.validation else "test"}
    runs = [("final", params)] + ([] if args.skip_baseline else [("baseline", {**params, "fine_tune_epochs": 0})])
    for name, run_params in runs:
        print(f"[{name}] protocol A: fit on all intents", flush=True)
        a = protocol_a(train, test, run_params)
        print(f"[{name}] protocol A accuracy {a['accuracy']:.4f} (fit {a['fit_minutes']:.1f} min)", flush=True)
        print(f"[{name}] protocol B: 59 intents, calibrated edge threshold", flush=True)
        b = protocol_b(train, test, run_params)
        print(
            f"[{name}] protocol B in-scope {b['in_scope_accuracy']:.4f}, OOS recall {b['oos_recall']:.4f}"
            f" (closed-set ceiling {b['in_scope_closed_set_accuracy']:.4f},"
            f" in-scope sent to the edge {b['in_scope_sent_to_edge']:.4f}; {b['exemplars']} exemplars)",
            flush=True,
        )
        ablations = exemplar_ablations(b["model"], b["calibration"], test, out_of_scope_intents(train))
        print(
            f"[{name}] protocol B with exemplars: in-scope {ablations['exemplars_in_scope_accuracy']:.4f},"
            f" OOS recall {ablations['exemplars_oos_recall']:.4f}; exemplars of 9 of the 18 intents:"
            f" in-scope {ablations['half_exemplars_in_scope_accuracy']:.4f}, recall on those 9"
            f" {ablations['half_exemplars_seen_intent_oos_recall']:.4f}, on the other 9"
            f" {ablations['half_exemplars_unseen_intent_oos_recall']:.4f}"
            f" (without exemplars {ablations['no_exemplars_unseen_intent_oos_recall']:.4f})",
            flush=True,
        )
        prefix = "banking77" if name == "final" else "baseline_banking77"
        results.update({
            f"{prefix}_accuracy": a["accuracy"],
            f"{prefix}_heldout_in_scope_accuracy": b["in_scope_accuracy"],
            f"{prefix}_heldout_oos_recall": b["oos_recall"],
            f"{prefix}_heldout_in_scope_closed_set_accuracy": b["in_scope_closed_set_accuracy"],
            f"{prefix}_heldout_in_scope_sent_to_edge": b["in_scope_sent_to_edge"],
            f"{prefix}_heldout_local_share": b["local_share"],
            f"{prefix}_heldout_threshold": b["threshold"],
            f"{prefix}_heldout_proba_weight": b["proba_weight"],
            f"{prefix}_heldout_exemplar_weight": b["exemplar_weight"],
            **{f"{prefix}_heldout_{key}": value for key, value in ablations.items()},
            f"{prefix}_fit_minutes": a["fit_minutes"],
            f"{prefix}_heldout_fit_and_calibrate_minutes": b["fit_minutes"],
        })
        if name == "final":
            params_used = a["model"].get_params().items()
            results["settings"] = {k: (str(v) if isinstance(v, Path) else v) for k, v in params_used}
            latency = single_query_latency_ms(a["model"], [t for t, _ in test[:500]])
            results["single_query_latency_ms"] = latency
            results["fine_tune_epoch_losses"] = a["model"].fine_tune_losses_

    print("\n| metric | value |\n|---|---|")
    for key, value in results.items():
        if isinstance(value, float):
            print(f"| {key} | {value:.4f} |")
    print(f"| single-query p50 / p90 (ms) | {results['single_query_latency_ms']['p50']:.2f} / "
          f"{results['single_query_latency_ms']['p90']:.2f} |")
    out = args.out or (None if args.validation else RESULTS)
    if out is not None:
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(json.dumps(results, indent=2, sort_keys=True) + "\n", encoding="utf-8")
        print(f"wrote {out}")


if __name__ == "__main__":
    main()
