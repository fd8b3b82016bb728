"""Writes ``evals/corpora/pii_corpus.jsonl``: support texts with and without personal data, for ``evals.pii_eval``.

Deterministic (one seeded ``random.Random``), so the committed file can be regenerated and diffed.
Shapes are what people type into a support chat, written from how these numbers are printed and
quoted, not from the matcher's regexes: cards of every issuer range the matcher knows, grouped or
not, glued to words, followed by a CVV or expiry; SSNs; national and international phones;
emails; IBANs; and routine texts full of numbers (order, invoice and tracking numbers, prices,
dates, quantities, postcodes, Bitext's own queries). A few hard shapes are in on purpose.
Fictitious ranges are used where they exist: 555-01xx (US), 020 7946 0xxx and 07700 900xxx (UK),
(02) 5550 xxxx and 0491 570 1xx (Australia), and the payment networks' published test cards.

Each line: ``{"text", "sensitive", "kind", "shape", "value"}``; ``value`` is the exact sensitive
substring (sensitive lines only), so the evaluation can check that redaction removed all of it.
"""

from __future__ import annotations

import json
import random
import string
from collections.abc import Callable
from pathlib import Path
from typing import Any

OUT = Path(__file__).resolve().parent / "corpora" / "pii_corpus.jsonl"
SEED = 20261201
DIGITS = string.digits

# (network, first-digit range, lengths issued, how often each length is seen).
ISSUERS: list[tuple[str, tuple[int, int], list[int]]] = [
    ("visa", (4, 4), [16, 16, 16, 13, 19]),
    ("mastercard", (51, 55), [16]),
    ("mastercard 2-series", (2221, 2720), [16]),
    ("amex", (34, 34), [15]),
    ("amex", (37, 37), [15]),
    ("diners", (300, 305), [14, 16]),
    ("diners", (36, 36), [14]),
    ("diners", (38, 39), [16]),
    ("jcb", (3528, 3589), [16]),
    ("discover", (6011, 6011), [16, 19]),
    ("discover", (644, 649), [16]),
    ("discover", (65, 65), [16]),
    ("unionpay", (62, 62), [16, 19]),
    ("mir", (2200, 2204), [16]),
    ("maestro", (50, 50), [16, 19]),
    ("maestro", (56, 69), [16, 13, 19]),
    ("rupay", (60, 60), [16]),
    ("rupay", (81, 82), [16]),
]
# The networks' published test numbers: what people paste when they try a form.
TEST_CARDS = ["4111111111111111", "4242424242424242", "5555555555554444", "378282246310005", "6011111111111117",
              "3530111333300000", "30569309025904", "2223003122003222", "6200000000000005", "4000056655665556"]

# Real order and invoice numbers from Bitext's customer-support sample, and queries quoting them.
BITEXT_ORDERS = ["113542617735902", "732201349959", "370795561790", "3707955617", "00004587345", "00123842"]
BITEXT_QUERIES = [
    "ETA of order 113542617735902", "I do not know how to cancel purchase 3707955617",
    "I don't know what I need to do to get my bill #37777", "I expect a rebate of $1499",
    "I have got to se the status of order 00004587345", "I have to add a product to order 3707955617",
    "I need assistance to download the bill #12588", "I try to hceck the status of purchase 00123842",
    "I want to see the invoice #00108, help me", "I'm waiting for a compensation of 350 dollars",
    "I'm waiting for a reimbursement of $299", "can I edit order 370795561790?", "can i edit order 732201349959",
    "can you help me locate invoice #85632?", "can you help me track purchase 113542617735902?",
    "canceling order 113542617735902", "check order 00123842 status", "check status of order 00004587345",
    "could uhlep me to cancel purchase 732201349959", "help me checking the ETA of the order 3707955617",
    "how do I see the ETA of purchase 113542617735902?", "i expect a reimbursement of 1499 dollars",
    "i paid $160 for an order where could ii get a reimbursement", "order 732201349959 current status",
    "remove something from order 732201349959", "see purchase 00004587345 status",
    "status of order 113542617735902", "wanna see the ETA of the purchase 113542617735902",
    "where do I download bill #85632?", "how can I cancel purchase 113542617735902?",
    "can you help me canceling purchase 00004587345?", "I want to change several products of order 00004587345",
]
NAMES = ["jane", "john", "maria", "li", "ahmed", "sofia", "lukas", "emma", "noah", "olivia", "mateo", "aiko"]
SURNAMES = ["doe", "smith", "garcia", "chen", "khan", "rossi", "muller", "brown", "silva", "tanaka", "novak"]
DOMAINS = ["example.com", "example.org", "example.net", "mail.example.com", "example.co.uk", "example.de"]


def luhn_complete(body: str) -> str:
    """``body`` with the Luhn check digit appended."""
    total = 0
    for i, c in enumerate(reversed(body)):
        d = int(c) * (2 if i % 2 == 0 else 1)
        total += d - 9 if d > 9 else d
    return body + str((10 - total % 10) % 10)


def card_number(rng: random.Random, low: int, high: int, length: int) -> str:
    prefix = str(rng.randint(low, high))
    return luhn_complete(prefix + "".join(rng.choice(DIGITS) for _ in range(length - len(prefix) - 1)))


def grouped(number: str, sep: str) -> str:
    """The number as printed on the card: 4-6-5 (Amex), 4-6-4 (Diners 14), otherwise fours."""
    sizes = {15: [4, 6, 5], 14: [4, 6, 4]}.get(len(number), [4] * (len(number) // 4) + [len(number) % 4])
    parts, i = [], 0
    for size in sizes:
        if size:
            parts.append(number[i : i + size])
            i += size
    return sep.join(parts)


def iban(rng: random.Random, country: str, bban: str) -> str:
    """A valid IBAN (ISO 13616 mod-97 check digits) for ``bban``."""
    moved = "".join(str(int(c, 36)) for c in bban + country + "00")
    return f"{country}{98 - int(moved) % 97:02d}{bban}"


def bban(rng: random.Random, country: str) -> str:
    up, d = string.ascii_uppercase, DIGITS
    pick = lambda chars, n: "".join(rng.choice(chars) for _ in range(n))  # noqa: E731
    return {
        "DE": lambda: pick(d, 18), "GB": lambda: pick(up, 4) + pick(d, 14), "FR": lambda: pick(d, 10) + pick(up + d, 11) + pick(d, 2),
        "ES": lambda: pick(d, 20), "NL": lambda: pick(up, 4) + pick(d, 10), "IT": lambda: pick(up, 1) + pick(d, 10) + pick(d, 12),
        "CH": lambda: pick(d, 17), "AT": lambda: pick(d, 16), "BE": lambda: pick(d, 12), "PL": lambda: pick(d, 24),
    }[country]()


def row(text: str, kind: str | None, shape: str, value: str | None = None) -> dict[str, Any]:
    out: dict[str, Any] = {"text": text, "sensitive": kind is not None, "kind": kind, "shape": shape}
    if value is not None:
        out["value"] = value
    return out


CARD_CONTEXTS: list[tuple[str, str]] = [
    ("my card number is {c}", "plain"),
    ("please charge {c} for the order", "plain"),
    ("card{c}", "glued to a word"),
    ("visa{c} expired yesterday", "glued to a word"),
    ("{c} exp 08/27 cvv 123", "followed by expiry and CVV"),
    ("card: {c} 123", "followed by a bare CVV"),
    ("{c} 0827", "followed by a bare expiry"),
    ("12/27 {c} 311", "expiry before, CVV after"),
    ("order 58213 was charged to {c}", "preceded by an order number"),
    ("I paid $49.99 with {c} on 2026-11-02", "among a price and a date"),
    ("card number {c}, expiry 11/28, security code 4821", "with expiry and code, commas"),
    ("Card: {c}\nExp: 09/27\nCVC: 311", "form pasted over lines"),
    ("charged twice on {c}!!", "plain"),
    ("ref 88 {c} please refund", "preceded by a short number"),
    ("the number on my card is {c} can you check why it was declined", "plain"),
    ("{c}|09|2028|123", "pipe-separated dump"),
]
SSN_CONTEXTS = [
    "my SSN is {s}", "social security number {s}", "SSN:{s}", "ssn{s}", "for the tax form: {s}",
    "my ssn is {s}, dob 04/12/1985", "Social Security No. {s} - please update my account", "verify me with {s} please",
]


def sensitive(rng: random.Random) -> list[dict[str, Any]]:
    rows: list[dict[str, Any]] = []
    # Cards: every issuer range, three separators, contexts in turn.
    k = 0
    for network, (low, high), lengths in ISSUERS:
        for _ in range(7):
            number = card_number(rng, low, high, rng.choice(lengths))
            sep = ["", " ", "-"][k % 3]
            written = grouped(number, sep) if sep else number
            template, shape = CARD_CONTEXTS[k % len(CARD_CONTEXTS)]
            rows.append(row(template.format(c=written), "card_number", f"{network} {len(number)}, sep {sep!r}, {shape}", written))
            k += 1
    for i, number in enumerate(TEST_CARDS):
        written = grouped(number, " ") if i % 2 else number
        rows.append(row(f"test card {written} exp 12/30 cvc 737", "card_number", "published test card, expiry and CVC after", written))
    # Hard card shapes: dots, doubled spaces, groups split over a line break.
    for number, written, shape in [
        ("4111111111111111", "4111.1111.1111.1111", "dot-separated groups (hard)"),
        ("5555555555554444", "5555  5555  5555  4444", "double spaces between groups (hard)"),
        ("4242424242424242", "4242 4242\n4242 4242", "groups split over a line break (hard)"),
    ]:
        rows.append(row(f"my card: {written}", "card_number", shape, written))

    # SSNs: issued shapes (area 001-899 but 666, group 01-99, serial 0001-9999), dashes or spaces.
    for i in range(48):
        area = rng.choice([a for a in range(1, 900) if a != 666])
        sep = "-" if i % 2 else " "
        value = f"{area:03d}{sep}{rng.randint(1, 99):02d}{sep}{rng.randint(1, 9999):04d}"
        rows.append(row(SSN_CONTEXTS[i % len(SSN_CONTEXTS)].format(s=value), "us_ssn", f"ssn with {sep!r}", value))
    rows.append(row("social security number 078 05 1120", "us_ssn", "ssn with spaces (the Woolworth number)", "078 05 1120"))
    rows.append(row("my social security number is 219099999", "us_ssn", "ssn, nine bare digits (hard)", "219099999"))

    # Phones: fictitious ranges in the national and international ways people write them.
    def us(fmt: str) -> str:
        n = f"{rng.choice(['415', '212', '312', '646', '206', '503'])}555{rng.randint(100, 199):04d}"
        return fmt.format(n[:3], n[3:6], n[6:])

    phone_shapes: list[tuple[str, Callable[[], str]]] = [
        ("us (ddd) ddd-dddd", lambda: us("({}) {}-{}")),
        ("us ddd-ddd-dddd", lambda: us("{}-{}-{}")),
        ("us ddd.ddd.dddd", lambda: us("{}.{}.{}")),
        ("us 1-800", lambda: f"1-800-555-{rng.randint(100, 199):04d}"),
        ("us +1 spaced", lambda: us("+1 {} {} {}")),
        ("us +1 (ddd)", lambda: us("+1 ({}) {}-{}")),
        ("us +1 unspaced", lambda: us("+1{}{}{}")),
        ("us 001 from europe", lambda: us("001 {} {} {}")),
        ("uk london national", lambda: f"020 7946 0{rng.randint(0, 999):03d}"),
        ("uk london +44", lambda: f"+44 20 7946 0{rng.randint(0, 999):03d}"),
        ("uk +44 (0)", lambda: f"+44 (0)20 7946 0{rng.randint(0, 999):03d}"),
        ("uk 0044", lambda: f"0044 20 7946 0{rng.randint(0, 999):03d}"),
        ("uk mobile 5-6", lambda: f"07700 900{rng.randint(0, 999):03d}"),
        ("uk mobile 5-3-3", lambda: f"07700 900 {rng.randint(0, 999):03d}"),
        ("uk mobile +44", lambda: f"+44 7700 900{rng.randint(0, 999):03d}"),
        ("de +49 berlin", lambda: f"+49 30 {rng.randint(100000, 999999)}"),
        ("de 0049 berlin", lambda: f"0049 30 {rng.randint(100000, 999999)}"),
        ("de national slash", lambda: f"030/{rng.randint(1000000, 9999999)}"),
        ("de mobile national", lambda: f"0170 {rng.randint(1000000, 9999999)}"),
        ("fr +33 pairs", lambda: "+33 1 " + " ".join(f"{rng.randint(0, 99):02d}" for _ in range(4))),
        ("fr 0033 pairs", lambda: "0033 1 " + " ".join(f"{rng.randint(0, 99):02d}" for _ in range(4))),
        ("fr national pairs", lambda: "06 " + " ".join(f"{rng.randint(0, 99):02d}" for _ in range(4))),
        ("fr national dotted pairs", lambda: "01." + ".".join(f"{rng.randint(0, 99):02d}" for _ in range(4))),
        ("au +61", lambda: f"+61 2 5550 {rng.randint(0, 9999):04d}"),
        ("au national (02)", lambda: f"(02) 5550 {rng.randint(0, 9999):04d}"),
        ("au mobile 4-3-3", lambda: f"0491 570 {rng.randint(110, 159)}"),
        ("jp national", lambda: f"03-{rng.randint(1000, 9999)}-{rng.randint(1000, 9999)}"),
        ("jp +81", lambda: f"+81 3-{rng.randint(1000, 9999)}-{rng.randint(1000, 9999)}"),
        ("in +91", lambda: f"+91 98{rng.randint(100, 999)} {rng.randint(10000, 99999)}"),
        ("nl national", lambda: f"020-{rng.randint(100, 999)} {rng.randint(1000, 9999)}"),
        ("br +55", lambda: f"+55 11 9{rng.randint(1000, 9999)}-{rng.randint(1000, 9999)}"),
        ("es +34", lambda: f"+34 91{rng.randint(1, 9)} {rng.randint(100, 999)} {rng.randint(100, 999)}"),
    ]
    phone_contexts = ["call me at {p}", "my number is {p}", "tel:{p}", "you can reach me on {p} after 5pm",
                      "phone {p}, ask for Maria", "text me ({p}) when it ships"]
    for i in range(3 * len(phone_shapes)):
        shape, make = phone_shapes[i % len(phone_shapes)]
        value = make()
        rows.append(row(phone_contexts[i % len(phone_contexts)].format(p=value), "phone", shape, value))
    for text, value, shape in [
        ("call me at 555-0123", "555-0123", "us seven digits, no area code (hard)"),
        ("my number is 4155550123", "4155550123", "us ten bare digits (hard)"),
        ("llámame al 912 345 678", "912 345 678", "es national 3-3-3 (hard)"),
    ]:
        rows.append(row(text, "phone", shape, value))

    # Emails.
    email_contexts = ["write to {e}", "my email is {e}.", "contact: <{e}>", "mailto:{e}", "email{e}",
                      "send the invoice to {e} please", "({e})", "is {e} still on my account?"]
    for i in range(48):
        name, surname, domain = rng.choice(NAMES), rng.choice(SURNAMES), rng.choice(DOMAINS)
        local = [f"{name}.{surname}", f"{name}_{surname}{rng.randint(1, 99)}", f"{name[0]}.{surname}+orders", f"{name}{surname}"][i % 4]
        value = f"{local}@{domain}".upper() if i % 11 == 0 else f"{local}@{domain}"
        rows.append(row(email_contexts[i % len(email_contexts)].format(e=value), "email", f"email, {['dotted', 'underscore', 'plus tag', 'plain'][i % 4]}", value))
    rows.append(row("my email is jane dot doe at example dot com", "email", "spelled-out email (hard)", "jane dot doe at example dot com"))

    # IBANs, grouped in fours or not.
    countries = ["DE", "GB", "FR", "ES", "NL", "IT", "CH", "AT", "BE", "PL"]
    iban_contexts = ["IBAN: {i}", "please refund to {i}", "my iban is {i}", "iban{i}", "bank account {i}, name J. Doe"]
    for i in range(45):
        country = countries[i % len(countries)]
        value = iban(rng, country, bban(rng, country))
        written = " ".join(value[j : j + 4] for j in range(0, len(value), 4)) if i % 2 else value
        rows.append(row(iban_contexts[i % len(iban_contexts)].format(i=written), "iban", f"{country} iban, {'grouped' if i % 2 else 'unspaced'}", written))
    lower = iban(rng, "DE", bban(rng, "DE")).lower()
    rows.append(row(f"iban {lower}", "iban", "lower-case iban (hard)", lower))
    return rows


def routine(rng: random.Random) -> list[dict[str, Any]]:
    rows = [row(q, None, "bitext query") for q in BITEXT_QUERIES]
    templates = ["I want to cancel order {{Order Number}}", "where is my order {{Order Number}}?",
                 "I need the invoice {{Invoice Number}} for order {{Order Number}}", "refund {{Refund Amount}} for {{Order Number}}",
                 "call {{Customer Support Phone Number}} about order {{Order Number}}", "track {{Tracking Number}} please"]
    rows += [row(t, None, "bitext template") for t in templates]
    for order in BITEXT_ORDERS:
        rows.append(row(f"the order {order} never arrived and I was charged $89.90", None, "bitext order number and price"))

    def add(shape: str, n: int, make: Callable[[], str]) -> None:
        rows.extend(row(make(), None, shape) for _ in range(n))

    d = lambda n: "".join(rng.choice(DIGITS) for _ in range(n))  # noqa: E731
    up = lambda n: "".join(rng.choice(string.ascii_uppercase) for _ in range(n))  # noqa: E731
    add("order ORD-yyyy-nnnnnn", 10, lambda: f"order ORD-{rng.randint(2019, 2026)}-{d(6)} is late")
    add("amazon order", 12, lambda: f"Amazon order {d(3)}-{d(7)}-{d(7)} arrived damaged")
    add("ebay order", 6, lambda: f"ebay order number {d(2)}-{d(5)}-{d(5)}")
    add("numeric order number", 20, lambda: f"my order {d(rng.randint(6, 12))} hasn't shipped yet")
    add("order with hash", 8, lambda: f"order #{rng.randint(1000, 99999)} placed on {rng.randint(1, 28)}/{rng.randint(1, 12)}/2026")
    add("price", 20, lambda: rng.choice([
        f"it costs ${rng.randint(1, 9)},{d(3)}.{d(2)}", f"I was charged €{rng.randint(1, 999)},{d(2)} twice",
        f"the total was {rng.randint(1, 9)}.{d(3)},{d(2)} €", f"£{rng.randint(1, 999)}.{d(2)} plus £4.99 delivery",
        f"USD {rng.randint(1, 9)},{d(3)} for the annual plan", f"refund of {rng.randint(10, 999)} dollars please"]))
    add("date", 20, lambda: rng.choice([
        f"delivered on 2026-{rng.randint(1, 12):02d}-{rng.randint(1, 28):02d}", f"ordered {rng.randint(1, 12):02d}/{rng.randint(1, 28):02d}/2026",
        f"expected by {rng.randint(1, 28):02d}.{rng.randint(1, 12):02d}.2026", f"return window ends Dec {rng.randint(1, 31)}, 2026",
        f"since {rng.randint(1, 28)}/{rng.randint(1, 12)}/26 nothing happened"]))
    add("time", 10, lambda: rng.choice([
        f"between {rng.randint(8, 11)}:30 and {rng.randint(12, 18)}:00 tomorrow", f"the courier came at {rng.randint(10, 23)}:{d(2)[0]}5",
        f"open {rng.randint(8, 10)}-{rng.randint(17, 20)} Mon-Fri", f"slot 2026-12-0{rng.randint(1, 9)} {rng.randint(10, 19)}:00-{rng.randint(20, 22)}:00"]))
    add("ups tracking", 10, lambda: f"UPS 1Z{up(3)}{d(3)}{d(10)} says delivered")
    add("usps tracking grouped", 10, lambda: f"USPS {rng.choice(['9400', '9205', '9361', '9405', '9470'])} {d(4)} {d(4)} {d(4)} {d(4)} {d(2)} is stuck")
    add("usps tracking unspaced", 6, lambda: f"tracking {rng.choice(['9400', '9205', '9361'])}{d(18)}")
    add("fedex tracking 4-4-4", 8, lambda: f"FedEx {d(4)} {d(4)} {d(4)} shows an exception")
    add("fedex tracking unspaced", 4, lambda: f"fedex tracking number {d(12)}")
    add("dhl tracking", 8, lambda: rng.choice([f"DHL {d(10)}", f"DHL JD01{d(16)}", f"GM{d(18)} not updated"]))
    add("royal mail tracking", 4, lambda: f"Royal Mail {up(2)}{d(9)}GB")
    add("invoice number", 12, lambda: rng.choice([
        f"invoice INV-{rng.randint(2019, 2026)}-{d(5)}", f"invoice {rng.randint(2019, 2026)}/{d(5)} is wrong", f"bill #{d(5)}",
        f"credit note CN-{d(6)}"]))
    add("quantity", 12, lambda: rng.choice([
        f"I need {rng.randint(2, 9)} x {rng.choice([250, 500, 750])} ml", f"{rng.randint(2, 20)} boxes of {rng.choice([12, 24, 48])}",
        f"{rng.randint(1, 5)} items, {rng.randint(1, 9)}.{rng.randint(0, 9)} kg", f"size {rng.randint(36, 46)} in {rng.randint(2, 4)} colours"]))
    add("postcode", 12, lambda: rng.choice([
        "ship to SW1A 1AA", f"{rng.randint(10115, 14199)} Berlin", f"Beverly Hills, CA 90210-{d(4)}", f"{rng.choice(['75008', '69002'])} France",
        f"{rng.randint(1011, 1109)} AB Amsterdam", "Toronto M5V 3L9", f"Sydney NSW 2000, unit {rng.randint(1, 40)}"]))
    add("large amount with spaces", 6, lambda: f"{rng.randint(1, 99)} {d(3)} {d(3)} views on the product page")
    add("account and ticket ids", 10, lambda: rng.choice([
        f"ticket #{d(5)}", f"customer ID C-{d(7)}", f"case {d(8)} still open", f"membership no. {d(9)}", f"RMA-{d(6)}-{d(2)}"]))
    add("card without its number", 8, lambda: rng.choice([
        f"card ending in {d(4)} was declined", "my credit card was charged twice", f"last 4 digits {d(4)}",
        f"the card expires {rng.randint(1, 12):02d}/{rng.randint(26, 31)}"]))
    add("versions, models, addresses", 10, lambda: rng.choice([
        f"app version {rng.randint(1, 9)}.{rng.randint(0, 30)}.{rng.randint(0, 9)}", f"router at 192.168.{rng.randint(0, 9)}.{rng.randint(1, 254)}",
        f"model SM-G{d(3)}B", f"iPhone {rng.randint(11, 16)} Pro {rng.choice([128, 256, 512])} GB", f"screen {rng.choice(['1920x1080', '2560x1440'])}"]))
    add("bank transfer reference", 10, lambda: f"bank transfer reference {d(rng.randint(13, 20))}")
    add("gift card code", 6, lambda: f"gift card {up(4)}-{up(4)}-{up(4)} does not work")
    return rows


def main() -> None:
    rng = random.Random(SEED)
    rows = sensitive(rng) + routine(rng)
    OUT.parent.mkdir(parents=True, exist_ok=True)
    OUT.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows), encoding="utf-8")
    print(f"{sum(r['sensitive'] for r in rows)} sensitive and {sum(not r['sensitive'] for r in rows)} routine texts written to {OUT}")


if __name__ == "__main__":
    main()
