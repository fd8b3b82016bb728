"""``python -m evals.pii_eval``: the PII matcher on a corpus of support texts, with and without personal data.

Routing, log redaction, the response cache and dataset scrubbing all use one matcher
(:class:`hybrid_common.pii.PiiMatcher` with its default patterns), so one corpus measures them
all. Figures (merged into ``evals/results/security.json``):

- ``pii_recall``: share of sensitive texts where ``find`` reports something (kept local);
- ``pii_false_alarm_rate``: share of routine texts where it does (a local answer for nothing);
- ``pii_redaction_exact``: share of sensitive texts with a ``value`` whose redaction leaves no
  piece of that value (no digit run of two or more, no email part; the value itself when it has
  neither) beyond what the rest of the text already holds.

The corpus is written by ``evals/make_pii_corpus.py``; targets are recall ≥ 0.99 and false
alarms ≤ 0.02.
"""

from __future__ import annotations

import json
import re
import sys
from pathlib import Path
from typing import Any

from evals.figures import merge_figures
from hybrid_common.pii import PiiMatcher

CORPUS = Path(__file__).resolve().parent / "corpora" / "pii_corpus.jsonl"
RESULTS = Path(__file__).resolve().parent / "results" / "security.json"
TARGET_RECALL = 0.99
TARGET_FALSE_ALARM_RATE = 0.02


def load(corpus: Path = CORPUS) -> list[dict[str, Any]]:
    return [json.loads(line) for line in corpus.read_text(encoding="utf-8").splitlines() if line.strip()]


def _pieces(value: str) -> list[str]:
    """The parts of a sensitive value that must not survive redaction: digit runs, an email's two halves."""
    pieces = re.findall(r"\d{2,}", value)
    if "@" in value:
        pieces += [p for p in value.lower().split("@") if p]
    return pieces or [value.lower()]


def redaction_exact(matcher: PiiMatcher, text: str, value: str) -> bool:
    """No piece of ``value`` left in the redacted text, counting what the text holds besides it."""
    start = text.index(value)
    rest = (text[:start] + " " + text[start + len(value) :]).lower()
    redacted = matcher.redact(text).lower()
    return all(redacted.count(p) <= rest.count(p) for p in _pieces(value))


def measure(corpus: Path = CORPUS) -> dict[str, Any]:
    """Recall, false alarms and redaction on ``corpus``, with the texts behind every miss and alarm."""
    matcher = PiiMatcher()
    rows = load(corpus)
    sensitive = [r for r in rows if r["sensitive"]]
    routine = [r for r in rows if not r["sensitive"]]
    misses = [r for r in sensitive if matcher.find(r["text"]) is None]
    alarms = [{**r, "found": found} for r in routine if (found := matcher.find(r["text"])) is not None]
    with_value = [r for r in sensitive if r.get("value")]
    leaks = [r for r in with_value if not redaction_exact(matcher, r["text"], r["value"])]
    by_kind: dict[str, int] = {}
    for r in sensitive:
        by_kind[r["kind"]] = by_kind.get(r["kind"], 0) + 1
    return {
        "pii_recall": round(1 - len(misses) / len(sensitive), 4),
        "pii_false_alarm_rate": round(len(alarms) / len(routine), 4),
        "pii_redaction_exact": round(1 - len(leaks) / len(with_value), 4),
        "pii_sensitive": len(sensitive),
        "pii_routine": len(routine),
        "pii_sensitive_by_kind": by_kind,
        "pii_misses": [{"text": r["text"], "kind": r["kind"], "shape": r["shape"]} for r in misses],
        "pii_false_alarms": [{"text": r["text"], "shape": r["shape"], "found": r["found"]} for r in alarms],
        "pii_redaction_leaks": [{"text": r["text"], "redacted": matcher.redact(r["text"]), "shape": r["shape"]} for r in leaks],
    }


def main(argv: list[str] | None = None) -> int:
    figures = measure()
    for key in ("pii_recall", "pii_false_alarm_rate", "pii_redaction_exact", "pii_sensitive", "pii_routine", "pii_sensitive_by_kind"):
        print(f"{key:<24} {figures[key]}")
    for key in ("pii_misses", "pii_false_alarms", "pii_redaction_leaks"):
        print(f"{key} ({len(figures[key])}):")
        for item in figures[key]:
            print(f"  {item}")
    merge_figures(RESULTS, figures)
    print(f"merged into {RESULTS}")
    met = figures["pii_recall"] >= TARGET_RECALL and figures["pii_false_alarm_rate"] <= TARGET_FALSE_ALARM_RATE
    return 0 if met else 1


if __name__ == "__main__":
    sys.exit(main())
