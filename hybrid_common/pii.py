"""Personal data in chat text: the one matcher used by routing, log redaction, the cache and dataset scrubbing.

Routing keeps a query on the machine when it matches; the traffic log, the response cache and
training datasets obey the same answer, and redaction replaces matches with ``[NAME]``. One
implementation means they can never disagree about what counts as a card number. Conservative on
purpose: a false positive costs a local answer, a false negative leaks data. Matches are found when
glued to words (``card4111…``), because ``\\b`` does not separate a letter from a digit. Patterns
run in order and each redacts before the next looks, so a card is never reported or redacted as a
phone number. A pattern may name the part it redacts ``(?P<pii>…)``, the rest being context.

Card numbers. The ``card_number`` pattern only finds candidate runs: digits joined by one space,
dash or dot, or by up to two whitespace characters (``5555  5555…``, a line break). Inside a run, a
card is a window of 13-19 digits with an issuer's prefix and length and a valid Luhn checksum, so
a trailing CVV or expiry, or leading digits, do not hide it (``4111111111111111 123``). Random
digits pass Luhn one time in ten and a 22-digit run holds seven 16-digit windows, so a window
counts only where the writer's grouping allows a card: bounded on both sides by a separator or the
end of the run (``12/27 4111-1111-1111-1111 123``), or at the start of one unbroken run of 13-19
digits (a card with a CVV glued on; nobody glues digits in front of one, while DHL and bank
references are such runs). Not inside a longer unbroken run (a 25-digit tracking number), nor
across the groups of a grouped run (an Amazon order number ``112-1234567-1234567`` has 17
digits and would otherwise hold Luhn-valid windows in one order in three). USPS tracking numbers
(20-22 digits from 92-95) hold no cards. UATP (prefix 1) is left out: Bitext's order numbers have
its shape. Bounded windows win, and at one start the commonest length wins (16, 15, 14, 13, then
19-17), so ``4111 1111 1111 1111 123`` keeps its CVV rather than being read as a 19-digit card.
Redaction removes exactly the window's digits and the separators between them.

SSNs are ``ddd-dd-dddd`` or ``ddd dd dddd``, not inside a longer run, or nine digits right after
"SSN" or "social security"; other bare nine-digit numbers are as often order or account numbers.
Numbers never issued (area 000 or 666, group 00, serial 0000) are not SSNs; 9xx areas are kept,
since ITINs share the shape. IBANs must pass their mod-97 check, in either case. Phones need a
``+`` or ``00`` prefix with 7-15 digits after it (E.164), or a national shape: a three-digit or
trunk-0 area code then groups ending in four digits, trunk-0 forms (``030/901820``, ``07700
900123``, ``0491 570 156``) or French pairs. A bare digit run is more often an order number, and
shapes like ``10 000 000`` or a FedEx ``1234 5678 9012`` are kept out.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping
from functools import lru_cache

__all__ = [
    "DEFAULT_PII_PATTERNS",
    "PiiMatcher",
    "card_issuer",
    "is_card_number",
    "luhn_valid",
    "validate_patterns",
]

# Digits and phone separators that follow, counted: 7-15 digits, then no more (E.164 allows 15).
_E164 = r"(?=(?:[ .()-]*\d){7,15}(?![ .()-]*\d))"
# Not a continuation of a longer digit run on either side.
_NOT_AFTER_DIGITS = r"(?<![\d+])(?<!\d[ .-])"
_NOT_BEFORE_DIGITS = r"(?![ .-]?\d)"
_AREA = r"(?:\d{3}|0\d{1,4})"

DEFAULT_PII_PATTERNS: dict[str, str] = {
    # The local part starts where its characters do: tried at every letter, a long run costs O(n²).
    "email": r"(?<![A-Za-z0-9._%+-])[A-Za-z0-9._%+-]+@[A-Za-z0-9.-]+\.[A-Za-z]{2,}",
    # Before cards: an IBAN's digits may hold a Luhn-valid window, and the IBAN is the whole value.
    # ASCII only: under Unicode case folding [A-Z] also takes the Kelvin sign, which int(c, 36) refuses.
    "iban": r"(?ai)(?<![0-9])[A-Z]{2}\d{2}(?: ?[A-Z0-9]{4}){3,7}(?: ?[A-Z0-9]{1,3})?(?![A-Z0-9])",
    # Candidate runs only; the card windows inside are picked by the card rule (module docstring).
    "card_number": r"[0-9]+(?:(?:\s{1,2}|[.-])[0-9]+)*",
    "us_ssn": (
        r"(?<![\d-])(?<!\d )(?!000|666)\d{3}([ -])(?!00)\d{2}\1(?!0000)\d{4}(?![ -]?\d)"
        r"|(?i:ssn|social security)\D{0,20}?(?<!\d)(?P<pii>(?!000|666)\d{3}(?!00)\d{2}(?!0000)\d{4})(?!\d)"
    ),
    "phone": (
        # International: +49 30 901820, +1 (555) 010-9999, 0049 30 901820 (a separator after 00CC).
        rf"(?:\+|(?<![\d+])00(?=[1-9]\d{{0,2}}[ (.-])){_E164}[1-9]\d*(?:[ .-]?\(\d{{1,4}}\)[ .-]?\d+|[ .-]\d+)*"
        # National: 555-010-9999, (555) 010-9999, 1-800-555-0199, 020 7946 0958, 03-1234-5678;
        # trunk 0: 030 901820, 030/901820, 07700 900123, 07700 900 123, 0491 570 156; 01 42 68 53 00;
        # Spain 912 345 678 (its numbers start 6-9; costs a space-grouped amount from 600 million up).
        rf"|{_NOT_AFTER_DIGITS}(?:(?:1[ .-])?(?:\({_AREA}\)[ .-]?|{_AREA}[ .-])\d{{3,4}}[ .-]\d{{4}}"
        rf"|0\d{{1,4}}[ /.-]\d{{5,8}}|0\d{{3,4}}[ .-]\d{{3}}[ .-]\d{{3}}|0[1-9](?:[ .-]\d{{2}}){{4}}|[6-9]\d\d \d{{3}} \d{{3}})"
        rf"{_NOT_BEFORE_DIGITS}"
    ),
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

# Each digit doubled, then its digits summed (Luhn), as a character map: the card scan calls this a lot.
_DOUBLED = str.maketrans("0123456789", "0246813579")
# USPS tracking numbers (Intelligent Mail package barcode): 20-22 digits starting with these.
_USPS = frozenset({"92", "93", "94", "95"})
# Window lengths tried at one start, commonest first (see the module docstring).
_WINDOW_LENGTHS = (16, 15, 14, 13, 19, 18, 17)


def luhn_valid(candidate: str) -> bool:
    """The Luhn checksum every payment card number satisfies (about 1 in 10 random numbers do)."""
    digits = candidate if candidate.isascii() and candidate.isdigit() else re.sub(r"[^0-9]", "", candidate)
    return (sum(map(int, digits[-1::-2])) + sum(map(int, digits[-2::-2].translate(_DOUBLED)))) % 10 == 0


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


@lru_cache(maxsize=4096)
def _issued_lengths(prefix: str) -> frozenset[int]:
    """The card lengths issued under a four-digit prefix (every issuer range is at most four digits)."""
    return frozenset().union(*(lengths for low, high, lengths, _ in _ISSUERS if low <= prefix[: len(low)] <= high))


def _card_spans(run: str) -> list[tuple[int, int]]:
    """Character spans of the card numbers inside a run of digits and separators (module docstring)."""
    at = [i for i, c in enumerate(run) if "0" <= c <= "9"]
    digits = "".join(run[i] for i in at)
    if len(digits) < 13 or (20 <= len(digits) <= 22 and digits[:2] in _USPS):
        return []
    # Digit indices where a group starts, and where one ends (exclusive): the separators' places.
    starts = [0] + [k for k in range(1, len(digits)) if at[k] != at[k - 1] + 1]
    ends = set(starts[1:]) | {len(digits)}

    def window(s: int, fits: Callable[[int], bool]) -> tuple[int, int] | None:
        lengths = _issued_lengths(digits[s : s + 4])
        for n in _WINDOW_LENGTHS:
            if n in lengths and s + n <= len(digits) and fits(s + n) and luhn_valid(digits[s : s + n]):
                return s, s + n
        return None

    taken: list[tuple[int, int]] = []
    for s in starts:  # left to right, so overlap is only ever with the last window taken
        if (not taken or s >= taken[-1][1]) and (w := window(s, ends.__contains__)):
            taken.append(w)
    if not taken and len(starts) == 1 and len(digits) <= 19 and (w := window(0, lambda e: True)):
        taken.append(w)  # one unbroken run: a card with a CVV or expiry glued on
    return sorted((at[s], at[e - 1] + 1) for s, e in taken)


def _iban_spans(candidate: str) -> list[tuple[int, int]]:
    """The whole candidate if it passes the IBAN check (ISO 13616: mod 97 of the rearranged digits is 1)."""
    compact = candidate.replace(" ", "").upper()
    number = "".join(str(int(c, 36)) for c in compact[4:] + compact[:4])
    return [(0, len(candidate))] if int(number) % 97 == 1 else []


# Patterns of these names keep only the parts of a match these return (spans within the match).
_REFINE: dict[str, Callable[[str], list[tuple[int, int]]]] = {"card_number": _card_spans, "iban": _iban_spans}


def validate_patterns(patterns: Mapping[str, str]) -> dict[str, str]:
    """Named PII regexes, each checked to compile (a bad pattern fails at load, not mid-request)."""
    for name, pattern in patterns.items():
        try:
            re.compile(pattern)
        except re.error as err:
            raise ValueError(f"pii pattern {name!r} is not a valid regex: {err}") from err
    return dict(patterns)


class PiiMatcher:
    """Finds and redacts named PII patterns; ``card_number`` and ``iban`` matches must also pass their checks."""

    def __init__(self, patterns: Mapping[str, str] | None = None) -> None:
        source = DEFAULT_PII_PATTERNS if patterns is None else validate_patterns(patterns)
        self._patterns = [(name, re.compile(p), _REFINE.get(name)) for name, p in source.items()]

    @property
    def names(self) -> list[str]:
        return [name for name, _, _ in self._patterns]

    def __bool__(self) -> bool:
        return bool(self._patterns)

    @staticmethod
    def _spans(
        pattern: re.Pattern[str], refine: Callable[[str], list[tuple[int, int]]] | None, text: str
    ) -> list[tuple[int, int]]:
        spans: list[tuple[int, int]] = []
        for m in pattern.finditer(text):
            start, end = m.span("pii") if "pii" in pattern.groupindex and m.group("pii") is not None else m.span()
            if refine is None:
                spans.append((start, end))
            else:
                spans.extend((start + s, start + e) for s, e in refine(text[start:end]))
        return spans

    def find(self, text: str) -> str | None:
        """The name of the first pattern with a match in ``text`` (cards: the card rule), if any."""
        for name, pattern, refine in self._patterns:
            if self._spans(pattern, refine, text):
                return name
        return None

    def redact(self, text: str) -> str:
        """``text`` with every match replaced by ``[NAME]`` (upper case), pattern by pattern in order."""
        for name, pattern, refine in self._patterns:
            spans = self._spans(pattern, refine, text)
            if not spans:
                continue
            tag, pieces, last = f"[{name.upper()}]", [], 0
            for start, end in spans:
                pieces += [text[last:start], tag]
                last = end
            text = "".join(pieces) + text[last:]
        return text
