"""One PII matcher for routing, log redaction and dataset scrubbing: card numbers need an issuer prefix and Luhn."""

from __future__ import annotations

import time

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


# Issue 24: shapes real users type that the first matcher missed or mislabelled.
@pytest.mark.parametrize(
    "text",
    [
        "card 4111111111111111 123",  # a trailing CVV made the run 19 digits, hiding the card
        "use 4242424242424242 424",
        "4111 1111 1111 1111 123",  # was reported as a phone number
        "12/27 4111-1111-1111-1111 123",
        "ref 12 5555 5555 5555 4444",  # leading digits
        "amex 3782 822463 10005 exp 0427",
    ],
)
def test_a_card_followed_or_preceded_by_digits_is_a_card(text: str) -> None:
    assert PiiMatcher().find(text) == "card_number"


@pytest.mark.parametrize(
    ("text", "redacted"),
    [
        ("card 4111111111111111 123", "card [CARD_NUMBER] 123"),
        ("4111 1111 1111 1111 123", "[CARD_NUMBER] 123"),
        ("exp 12/27 4111-1111-1111-1111 cvv 123", "exp 12/27 [CARD_NUMBER] cvv 123"),
        ("ref 12 5555 5555 5555 4444 thanks", "ref 12 [CARD_NUMBER] thanks"),
    ],
)
def test_redaction_removes_the_whole_card_and_nothing_else(text: str, redacted: str) -> None:
    assert PiiMatcher().redact(text) == redacted


def test_a_card_glued_inside_one_long_unbroken_run_is_not_a_card() -> None:
    """A 25-digit tracking number has many Luhn-valid 16-digit windows; only separated groups count."""
    run = "999" + "4111111111111111" + "123456"
    assert len(run) == 25 and PiiMatcher().find(f"tracking {run}") is None
    assert PiiMatcher().find("tracking 999 4111111111111111 123456") == "card_number"
    uatp = next(c for d in "0123456789" if luhn_valid(c := "12345678901234" + d))  # prefix 1: UATP, left out
    assert PiiMatcher().find(f"card {uatp}") is None


@pytest.mark.parametrize(
    ("text", "found"),
    [
        ("social security number 078 05 1120", "us_ssn"),
        ("ssn: 078-05-1120", "us_ssn"),
        ("my ssn is 078 05 1120, thanks", "us_ssn"),
        ("reference 078051120", None),  # nine bare digits are an order or account number as often
        ("call 0049 30 901820", "phone"),
        ("call 0033 1 42 68 53 00", "phone"),
        ("call +49 30 901820", "phone"),
        ("call +1 (555) 010-9999", "phone"),
        ("call (555) 010-9999", "phone"),
        ("call 555-010-9999", "phone"),
        ("my social security number is 219099999", "us_ssn"),  # nine bare digits, but named
        ("ssn 000-12-3456", None),  # area 000 is never issued
        ("iban de89 3704 0044 0532 0130 00", "iban"),  # lower case
        ("DHL JD014600006281230704", None),  # IBAN-shaped, but fails the mod-97 check
    ],
)
def test_ssns_with_spaces_and_international_phones(text: str, found: str | None) -> None:
    assert PiiMatcher().find(text) == found


def test_ssn_and_international_phone_redaction() -> None:
    matcher = PiiMatcher()
    assert matcher.redact("ssn 078 05 1120 ok") == "ssn [US_SSN] ok"
    assert matcher.redact("call 0049 30 901820 today") == "call [PHONE] today"
    assert matcher.redact("my SSN is 219099999.") == "my SSN is [US_SSN]."  # the number, not its label


def test_long_input_is_matched_in_linear_time() -> None:
    """Requests run to 200,000 characters; the email rule used to retry every letter of a long word."""
    start = time.perf_counter()
    for text in ("a" * 100_000, "4 " * 5_000, "1-" * 25_000):
        PiiMatcher().redact(text)
    assert time.perf_counter() - start < 1.0


@pytest.mark.parametrize(
    "text",
    [
        "it costs $1,299.00 plus 19.99 shipping",
        "delivered on 2026-12-01, or was it 01/12/2026 or 12.01.2026?",
        "between 10:30 and 11:45 tomorrow",
        "order ORD-2024-118833 is late",
        "my order 732201349959 and 370795561790",  # Bitext's 12-digit order numbers
        "purchase 00004587345 and 00123842",
        "UPS 1Z999AA10123456784",
        "USPS 9400 1000 0000 0000 0000 00",  # a 22-digit tracking number was taken for a phone
        "I need 2 x 250 ml and 3 boxes of 12",
        "1,000,000 points, 10 000 000 views",
        "Amazon order 112-1234567-1234567",
        "Amazon order 670-7572080-2693888",  # 17 digits holding a Luhn-valid Mastercard window across groups
        "USPS 9400 6507 3441 4333 1566 36",  # a group-aligned Luhn-valid Discover window
        "FedEx 7489 1234 5678",
    ],
)
def test_routine_numbers_are_not_pii(text: str) -> None:
    assert PiiMatcher().find(text) is None and PiiMatcher().redact(text) == text


def test_bitext_order_numbers_are_never_cards() -> None:
    """Bitext instructions and reference answers carry order numbers; not one may pass the card rule."""
    from tests.conftest import BITEXT_CSV, bitext_rows

    if not BITEXT_CSV.is_file():
        pytest.fail(f"Bitext dataset missing at {BITEXT_CSV}")
    cards = PiiMatcher({"card_number": DEFAULT_PII_PATTERNS["card_number"]})
    hits = [text for row in bitext_rows() for text in (row["instruction"], row["response"]) if cards.find(text)]
    assert hits == []


SAMPLES = [
    "my card is 4111 1111 1111 1111",
    "card4111111111111111 please",
    f"order {BITEXT_ORDER} has not arrived",
    f"order{BITEXT_ORDER} has not arrived",
    "reach me at jane@example.com",
    "nothing personal here",
    "card 4111 1111 1111 1111 123",
    "call 0049 30 901820",
    "ssn 078 05 1120",
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
