"""Personal data in chat text: the one matcher used by routing, log redaction and dataset scrubbing.

Routing keeps a query on the machine when it matches; the traffic log and training datasets
replace matches with ``[NAME]``. One implementation means the three can never disagree about
what counts as a card number. Conservative on purpose: a false positive costs a local answer, a
false negative leaks data. Matches are found when glued to words (``card4111…``), because
``\\b`` does not separate a letter from a digit.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping

__all__ = [
    "DEFAULT_PII_PATTERNS",
    "PiiMatcher",
    "card_issuer",
    "is_card_number",
    "luhn_valid",
    "validate_patterns",
]

DEFAULT_PII_PATTERNS: dict[str, str] = {
    "email": r"[A-Za-z0-9._%+-]+@[A-Za-z0-9.-]+\.[A-Za-z]{2,}",
    # 13-19 digits, optionally grouped; also checked by is_card_number (issuer prefix and Luhn),
    # because order and tracking numbers are long digit runs too.
    "card_number": r"(?<!\d)(?:\d[ -]?){12,18}\d(?!\d)",
    "iban": r"(?<![A-Z0-9])[A-Z]{2}\d{2}(?: ?[A-Z0-9]{4}){3,7}(?: ?[A-Z0-9]{1,3})?(?![A-Z0-9])",
    "us_ssn": r"(?<!\d)\d{3}-\d{2}-\d{4}(?!\d)",
    # A bare digit run is more often an order number than a phone number: ask for a "+" or separators.
    "phone": r"\+\d{1,3}[ .-]?\d{2,4}[ .-]?\d{3,4}[ .-]?\d{3,4}\b|(?<![\w+])\(?\d{2,4}\)?[ .-]\d{3,4}[ .-]\d{3,4}\b",
}

# Issuer identification number ranges (first digits, inclusive) and the lengths each issues.
# UATP airline cards (prefix 1, 15 digits) are left out on purpose: Bitext's order numbers such as
# 113542617735902 have exactly that shape, and holding every order query local as a "card" broke
# routing for a whole category.
_ISSUERS: tuple[tuple[str, str, frozenset[int], str], ...] = tuple(
    (low, high, frozenset(lengths), name)
    for low, high, lengths, name in (
        ("4", "4", (13, 16, 19), "visa"),
        ("51", "55", (16,), "mastercard"),
        ("2221", "2720", (16,), "mastercard"),
        ("34", "34", (15,), "amex"),
        ("37", "37", (15,), "amex"),
        ("300", "305", range(14, 20), "diners"),
        ("36", "36", range(14, 20), "diners"),
        ("38", "39", range(16, 20), "diners"),
        ("3528", "3589", range(16, 20), "jcb"),
        ("6011", "6011", range(16, 20), "discover"),
        ("644", "649", range(16, 20), "discover"),
        ("65", "65", range(16, 20), "discover"),
        ("62", "62", range(16, 20), "unionpay"),
        ("2200", "2204", range(16, 20), "mir"),
        ("50", "50", range(12, 20), "maestro"),
        ("56", "69", range(12, 20), "maestro"),
        ("60", "60", (16,), "rupay"),
        ("81", "82", (16,), "rupay"),
    )
)


def luhn_valid(candidate: str) -> bool:
    """The Luhn checksum every payment card number satisfies (about 1 in 10 random numbers do)."""
    digits = [int(c) for c in candidate if c.isdigit()]
    total = sum(digits[-1::-2]) + sum(sum(divmod(2 * d, 10)) for d in digits[-2::-2])
    return total % 10 == 0


def card_issuer(candidate: str) -> str | None:
    """The card network whose prefix and length ``candidate``'s digits have, or None."""
    digits = "".join(c for c in candidate if c.isdigit())
    for low, high, lengths, name in _ISSUERS:
        if len(digits) in lengths and low <= digits[: len(low)] <= high:
            return name
    return None


def is_card_number(candidate: str) -> bool:
    """A real issuer prefix and length, and a valid Luhn checksum."""
    return card_issuer(candidate) is not None and luhn_valid(candidate)


# Patterns of these names only count when the match also passes the check.
_CHECKS: dict[str, Callable[[str], bool]] = {"card_number": is_card_number}


def validate_patterns(patterns: Mapping[str, str]) -> dict[str, str]:
    """Named PII regexes, each checked to compile (a bad pattern fails at load, not mid-request)."""
    for name, pattern in patterns.items():
        try:
            re.compile(pattern)
        except re.error as err:
            raise ValueError(f"pii pattern {name!r} is not a valid regex: {err}") from err
    return dict(patterns)


class PiiMatcher:
    """Finds and redacts named PII patterns; a pattern named ``card_number`` also needs :func:`is_card_number`."""

    def __init__(self, patterns: Mapping[str, str] | None = None) -> None:
        source = DEFAULT_PII_PATTERNS if patterns is None else validate_patterns(patterns)
        self._patterns = [(name, re.compile(p), _CHECKS.get(name)) for name, p in source.items()]

    @property
    def names(self) -> list[str]:
        return [name for name, _, _ in self._patterns]

    def __bool__(self) -> bool:
        return bool(self._patterns)

    def find(self, text: str) -> str | None:
        """The name of the first pattern with a match in ``text`` that passes its check, if any."""
        for name, pattern, check in self._patterns:
            if any(check is None or check(m.group()) for m in pattern.finditer(text)):
                return name
        return None

    def redact(self, text: str) -> str:
        """``text`` with every match that passes its check replaced by ``[NAME]`` (upper case)."""
        for name, pattern, check in self._patterns:
            tag = f"[{name.upper()}]"
            text = pattern.sub(lambda m, c=check, t=tag: t if c is None or c(m.group()) else m.group(), text)
        return text
