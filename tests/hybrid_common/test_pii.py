"""One PII matcher for routing, log redaction and dataset scrubbing: card numbers need an issuer prefix and Luhn."""

from __future__ import annotations

import pytest

from hybrid_common.pii import DEFAULT_PII_PATTERNS, PiiMatcher, card_issuer, is_card_number, luhn_valid

BITEXT_ORDER = "113542617735902"  # a Bitext order number: passes Luhn, but no card network issues it


def test_luhn_alone_is_not_enough_for_a_card() -> None:
    assert luhn_valid(BITEXT_ORDER) and card_issuer(BITEXT_ORDER) is None and not is_card_number(BITEXT_ORDER)
    assert is_card_number("4111 1111 1111 1111") and card_issuer("4111111111111111") == "visa"
    assert is_card_number("5555-5555-5555-4444") and card_issuer("5555555555554444") == "mastercard"
    assert is_card_number("378282246310005") and card_issuer("378282246310005") == "amex"
    assert not is_card_number("4111111111111112")  # a Visa prefix, but the checksum fails
    assert not is_card_number("378282246310005" + "0")  # Amex numbers are 15 digits, not 16


@pytest.mark.parametrize(
    ("text", "found"),
    [
        ("my card is 4111 1111 1111 1111", "card_number"),
        ("card4111111111111111 expired", "card_number"),  # glued to a word: \b would miss it
        ("pay with visa4111111111111111", "card_number"),
        (f"where is order {BITEXT_ORDER}?", None),
        (f"where is order{BITEXT_ORDER}?", None),  # glued, and still an order number
        ("ssn123-45-6789", "us_ssn"),
        ("write to jane.doe@example.com", "email"),
        ("ibanDE89 3704 0044 0532 0130 00", "iban"),
        ("call +44 20 7946 0958", "phone"),
        ("I want to cancel my order", None),
    ],
)
def test_find(text: str, found: str | None) -> None:
    assert PiiMatcher().find(text) == found


def test_redact_blanks_exactly_what_find_finds() -> None:
    matcher = PiiMatcher()
    assert matcher.redact("pay with card4111111111111111 today") == "pay with card[CARD_NUMBER] today"
    assert matcher.redact(f"order {BITEXT_ORDER} is late") == f"order {BITEXT_ORDER} is late"
    assert matcher.redact("mail jane@example.com") == "mail [EMAIL]"


def test_custom_patterns_and_validation() -> None:
    matcher = PiiMatcher({"ticket": r"TCK-\d+"})
    assert matcher.names == ["ticket"] and matcher.find("see TCK-12") == "ticket" and matcher.redact("TCK-12") == "[TICKET]"
    assert not PiiMatcher({}) and PiiMatcher({}).find("4111111111111111") is None
    with pytest.raises(ValueError, match="broken"):
        PiiMatcher({"broken": "(("})
    assert PiiMatcher().names == list(DEFAULT_PII_PATTERNS)


SAMPLES = [
    "my card is 4111 1111 1111 1111",
    "card4111111111111111 please",
    f"order {BITEXT_ORDER} has not arrived",
    f"order{BITEXT_ORDER} has not arrived",
    "reach me at jane@example.com",
    "nothing personal here",
]


@pytest.mark.parametrize("text", SAMPLES)
def test_routing_log_and_datasets_agree(text: str, tmp_path) -> None:
    """What routing keeps on the machine is exactly what the log and the training data blank out."""
    from finetune.datasets import DatasetFilters, Example, clean
    from router.config import RouterConfig
    from router.policy import RoutingPolicy
    from router.traffic_log import LogRecord, TrafficLog

    routed_private = RoutingPolicy(RouterConfig()).pii_match(text) is not None

    with TrafficLog(tmp_path / "log.db", redact_patterns=DEFAULT_PII_PATTERNS) as log:
        log.record(LogRecord(id="r", requested_model="auto", reason="edge_case", stream=False, messages=[{"role": "user", "content": text}]))
        logged = next(log.records()).messages[0]["content"]

    kept, _ = clean([Example(({"role": "user", "content": text},), "A long enough answer to keep.")], DatasetFilters(near_duplicate_threshold=1.0))
    scrubbed = kept[0].messages[0]["content"]

    assert (logged != text) == routed_private
    assert scrubbed == logged
