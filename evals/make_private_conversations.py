"""Build ``evals/corpora/private_conversations.jsonl``: conversations whose *earlier* turn is private.

Each conversation opens with a private turn, then follow-ups that classify elsewhere, the shape
that leaked before a conversation's privacy was decided on all its turns:

* ``private_category``: a Bitext PAYMENT query (``make demo`` keeps PAYMENT private), from the
  replay pool the demo's classifier never trains on;
* ``pii``: an ACCOUNT-style request carrying an e-mail address, a card number or a phone number.

Follow-ups are short context-dependent turns ("and is there a fee for the second one?") or real
Bitext queries of other categories (DELIVERY, ORDER, REFUND, ...). Deterministic (a fixed seed);
run ``python -m evals.make_private_conversations`` to write the file again.
"""

from __future__ import annotations

import json
import random
from pathlib import Path

from evals.demo import bucket, load_bitext

OUT = Path(__file__).resolve().parent / "corpora" / "private_conversations.jsonl"

ANAPHORIC = [
    "and is there a fee for the second one?",
    "ok, and how long will that take?",
    "what if that doesn't work?",
    "can I do it from my phone?",
    "thanks. anything else I should know?",
    "the one from last month",
    "ok do it",
    "and what happens next?",
]
OTHER_CATEGORIES = ["DELIVERY", "ORDER", "REFUND", "SHIPPING_ADDRESS", "INVOICE", "CONTACT", "FEEDBACK"]
PII_TURNS = [  # (kind, the sensitive value, the turn that carries it)
    ("email", "{first}.{last}@example.com", "I need to update the details on my account, my email is {value}"),
    ("email", "{first}_{last}{n}@mailbox.org", "please close the account registered to {value}"),
    ("card_number", "{card}", "my card {value} was charged twice for the same account upgrade"),
    ("card_number", "{card}", "can you remove the card {value} from my profile"),
    ("phone", "+44 20 7946 0{n3}", "I can't log in, call me on {value} about my account"),
    ("phone", "0049 30 901{n3}", "change the phone number on my account to {value}"),
]
FIRST = ["anna", "li", "omar", "jana", "pedro", "keiko", "sam", "olu"]
LAST = ["smith", "nguyen", "kowalski", "haddad", "silva", "tanaka", "berg", "okafor"]


def _card(rng: random.Random) -> str:
    """A Luhn-valid Visa test-range number written in groups of four."""
    digits = [4, 5, 3, 9] + [rng.randrange(10) for _ in range(11)]
    total = 0
    for i, d in enumerate(reversed(digits)):
        total += sum(divmod(2 * d, 10)) if i % 2 == 0 else d
    digits.append((10 - total % 10) % 10)
    text = "".join(map(str, digits))
    return " ".join(text[i : i + 4] for i in range(0, 16, 4))


def build(seed: int = 7) -> list[dict[str, object]]:
    rng = random.Random(seed)
    rows = [r for r in load_bitext() if bucket(r["instruction"]) >= 80]  # the demo's replay pool
    payment = [r["instruction"] for r in rows if r["category"] == "PAYMENT"]
    others = {c: [r["instruction"] for r in rows if r["category"] == c] for c in OTHER_CATEGORIES}
    rng.shuffle(payment)

    def follow_ups() -> list[str]:
        turns = []
        for _ in range(rng.randint(1, 3)):
            if rng.random() < 0.5:
                turns.append(rng.choice(ANAPHORIC))
            else:
                turns.append(rng.choice(others[rng.choice(OTHER_CATEGORIES)]))
        return turns

    conversations: list[dict[str, object]] = []
    for i, first in enumerate(payment[:40]):
        conversations.append({"id": f"payment-{i:02d}", "kind": "private_category", "private_text": first, "turns": [first, *follow_ups()]})
    for i in range(18):
        pii_kind, value_template, template = PII_TURNS[i % len(PII_TURNS)]
        fields = {"first": rng.choice(FIRST), "last": rng.choice(LAST), "n": rng.randrange(10, 99),
                  "n3": rng.randrange(100, 999), "card": _card(rng)}  # fmt: skip
        value = value_template.format(**fields)
        first = template.format(value=value)
        conversations.append({"id": f"pii-{i:02d}", "kind": "pii", "pii_kind": pii_kind, "private_text": value, "turns": [first, *follow_ups()]})
    return conversations


def main() -> None:
    conversations = build()
    OUT.write_text("".join(json.dumps(c, ensure_ascii=False) + "\n" for c in conversations), encoding="utf-8")
    print(f"{OUT}: {len(conversations)} conversations")


if __name__ == "__main__":
    main()
