"""The PII matcher on the committed corpus of support texts meets its recall and false-alarm targets."""

from __future__ import annotations

from evals.pii_eval import CORPUS, TARGET_FALSE_ALARM_RATE, TARGET_RECALL, load, measure


def test_corpus_is_large_and_varied() -> None:
    rows = load(CORPUS)
    sensitive = [r for r in rows if r["sensitive"]]
    assert len(sensitive) >= 200 and len(rows) - len(sensitive) >= 200
    assert {r["kind"] for r in sensitive} == {"card_number", "us_ssn", "phone", "email", "iban"}
    assert all(r["kind"] is None for r in rows if not r["sensitive"])
    assert all(r["value"] in r["text"] for r in sensitive)


def test_matcher_meets_its_targets_on_the_corpus() -> None:
    figures = measure()
    assert figures["pii_recall"] >= TARGET_RECALL, figures["pii_misses"]
    assert figures["pii_false_alarm_rate"] <= TARGET_FALSE_ALARM_RATE, figures["pii_false_alarms"]
    assert figures["pii_redaction_exact"] >= TARGET_RECALL, figures["pii_redaction_leaks"]
    assert figures["pii_sensitive"] + figures["pii_routine"] == len(load(CORPUS))
