"""What makes two requests "the same" for the response cache, and what makes an answer specific.

An exact key covers everything that changes the answer: every message (system prompt included),
normalised; the route that would answer (the cloud route's model and endpoint, or the local
model version); and the sampling parameters. The API key is never part of it (it is not in a
:class:`~router._request.ChatRequest` at all). The scope (by default the OpenAI ``user`` field)
prefixes every key, so one end user's answers are never found under another's.

A semantic hit answers a *different* wording of a question, so an answer that repeats something
specific to the question it was given for (a number, an e-mail address, a URL, a name, a
``{{placeholder}}``) is only served to a question that contains the same thing.
"""

from __future__ import annotations

import hashlib
import json
import re
import unicodedata
from collections.abc import Iterable, Mapping
from typing import Any

from hybrid_common.chat import message_text
from router._request import ChatRequest

__all__ = ["partition_key", "request_key", "scope_of", "specifics", "unsupported_specifics"]

_SPACE = re.compile(r"\s+")
_EMAIL = re.compile(r"[\w.+-]+@[\w-]+(?:\.[\w-]+)+")
_URL = re.compile(r"\bhttps?://\S+|\bwww\.\S+", re.IGNORECASE)
_PLACEHOLDER = re.compile(r"\{\{[^{}]{1,60}\}\}")
_NUMBER = re.compile(r"\d(?:[\d,.:/-]*\d)?")
_WORD = re.compile(r"[^\W\d_][\w'’-]*")
_SENTENCE_END = frozenset(".!?:;\n")
_LONG_NUMBER_DIGITS = 5


def _normalised(text: str) -> str:
    """NFKC, case-folded, whitespace collapsed: wording differences no answer depends on."""
    return _SPACE.sub(" ", unicodedata.normalize("NFKC", text)).strip().casefold()


def _digest(value: Any) -> str:
    encoded = json.dumps(value, sort_keys=True, separators=(",", ":"), ensure_ascii=False, default=str)
    return hashlib.sha256(encoded.encode("utf-8")).hexdigest()


def scope_of(request: ChatRequest, scope: str) -> str:
    """The partition a request's answers live in (hashed: an end user id is not stored in clear)."""
    if scope == "global":
        value = ""
    elif scope == "user":
        value = request.user or ""
    else:
        value = (request.metadata or {}).get(scope.removeprefix("metadata:"), "")
    return hashlib.sha256(f"{scope}\x00{value}".encode()).hexdigest()[:32]


def _params(request: ChatRequest) -> dict[str, Any]:
    p = request.params
    extra = {**request.cloud_extra, **{f"provider:{k}": v for k, v in request.provider_extra.items()}}
    return {
        "max_tokens": p.max_tokens, "temperature": p.temperature, "top_p": p.top_p, "stop": list(p.stop),
        "seed": p.seed, "frequency_penalty": p.frequency_penalty, "presence_penalty": p.presence_penalty,
        "n": request.n, "extra": extra,
    }  # fmt: skip


def _message(message: Mapping[str, Any]) -> list[Any]:
    content = message.get("content")
    text = _normalised(message_text(content)) if isinstance(content, (str, list)) else content
    rest = {k: v for k, v in message.items() if k not in ("role", "content")}
    return [message.get("role"), text, rest]


def request_key(request: ChatRequest, *, scope: str, route: str) -> str:
    """The exact key: scope, every normalised message, the route and the parameters."""
    return _digest(["exact/1", scope, route, [_message(m) for m in request.messages], _params(request)])


def partition_key(request: ChatRequest, *, scope: str, route: str, category: str | None) -> str:
    """Where semantic candidates for ``request`` live: same scope, category, route, parameters and
    earlier messages (system prompt included); only the last user message may differ."""
    earlier = [_message(m) for m in request.messages[:-1]]
    return _digest(["semantic/1", scope, route, category, earlier, _params(request)])


def specifics(text: str) -> frozenset[str]:
    """Numbers, e-mail addresses, URLs, ``{{placeholders}}`` and names (capitalised words inside a
    sentence) in ``text``, case-folded."""
    found: set[str] = set()
    rest = text
    for pattern in (_EMAIL, _URL, _PLACEHOLDER):
        found.update(m.casefold() for m in pattern.findall(rest))
        rest = pattern.sub(" ", rest)
    found.update(_NUMBER.findall(rest))
    for match in _WORD.finditer(rest):
        word = match.group()
        before = rest[: match.start()].rstrip()
        starts_sentence = not before or before[-1] in _SENTENCE_END
        if word[0].isupper() and not starts_sentence and word != "I" and not word.startswith(("I'", "I’")):
            found.add(word.casefold())
    return frozenset(found)


def unsupported_specifics(answer: str, original_question: str, new_question: str) -> list[str]:
    """What ``answer`` repeats from ``original_question``, or any long number it holds (an order,
    account or phone number: five digits or more), that ``new_question`` does not contain."""
    repeated = _present(answer, specifics(original_question))
    repeated |= {n for n in _NUMBER.findall(answer) if sum(c.isdigit() for c in n) >= _LONG_NUMBER_DIGITS}
    if not repeated:
        return []
    asked = specifics(new_question) | _present(new_question, repeated)
    return sorted(repeated - asked)


def _present(text: str, items: Iterable[str]) -> set[str]:
    """The items that occur in ``text`` as whole tokens ("3" is not in "$300")."""
    folded = text.casefold()
    return {item for item in items if re.search(rf"(?<![\w]){re.escape(item)}(?![\w])", folded)}
