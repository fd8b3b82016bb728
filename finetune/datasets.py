"""Training sets from the traffic log: selection, cleaning, a stable split and frozen snapshots.

The local model learns from the cloud tier's answers (the teacher), so what enters a training
set is chosen conservatively: only successful, complete cloud answers, or local answers a
reviewer accepted. Cleaning scrubs PII, drops degenerate or oversized answers and removes exact
and near duplicates (MinHash LSH, so 100k rows stay cheap). The train/eval split hashes each
prompt, so it does not depend on row order or on how much data has arrived; the evaluation set
is frozen on first use so scores of successive adapters stay comparable. Snapshots are
content-addressed, written atomically and checksummed, so a training run can always say
exactly what it saw.
"""

from __future__ import annotations

import csv
import dataclasses
import hashlib
import json
import logging
import os
import re
import shutil
import stat
import uuid
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from functools import cached_property
from pathlib import Path
from typing import Any

import numpy as np
from pydantic import BaseModel, ConfigDict, Field, field_validator

from hybrid_common.chat import earlier_turns, is_text_only, last_user_text, logged_query, message_text, topic_messages, user_turns
from hybrid_common.errors import ArtifactError, ArtifactIntegrityError, ConfigError
from hybrid_common.files import MANIFEST_DIGEST_KEY, fsync_dir, manifest_digest, sha256_file, write_text_atomic
from hybrid_common.guard import DegenerationGuard
from hybrid_common.pii import DEFAULT_PII_PATTERNS, PiiMatcher, validate_patterns
from router.traffic_log import LogRecord, TrafficLog

__all__ = [
    "DROP_REASONS",
    "DatasetFilters",
    "DatasetSnapshot",
    "Example",
    "FrozenEvalSet",
    "build_snapshot",
    "clean",
    "examples_from_csv",
    "examples_from_jsonl",
    "examples_from_log",
    "iter_examples_from_log",
    "prune_snapshots",
    "split_bucket",
]

logger = logging.getLogger(__name__)

_SPACE = re.compile(r"\s+")
_ROLES = frozenset({"system", "user", "assistant"})
# Reasons ``clean`` drops an example for, in the order they are applied.
DROP_REASONS = (
    "no_prompt",
    "prompt_too_long",
    "answer_too_short",
    "answer_too_long",
    "degenerate",
    "duplicate",
    "near_duplicate",
)
_PROGRESS_MIN_ROWS = 5000


def _normalise(text: str) -> str:
    return _SPACE.sub(" ", text).strip().lower()


def _clean_answer(text: str) -> str:
    return text.replace("\r\n", "\n").strip()


# ---------------------------------------------------------------------------- Example


@dataclass(frozen=True, eq=True)
class Example:
    """One supervised example: the conversation up to the answer, and the answer to learn."""

    messages: tuple[dict[str, str], ...]
    answer: str
    category: str | None = None
    source: str = ""
    topic_start: int | None = None
    """A later turn: the index of the message that opened its topic, as the router logged it."""

    def __post_init__(self) -> None:
        messages = tuple({"role": str(m["role"]), "content": str(m["content"])} for m in self.messages)
        object.__setattr__(self, "messages", messages)
        object.__setattr__(self, "answer", _clean_answer(self.answer))

    def __hash__(self) -> int:  # messages holds dicts, so the generated hash would fail
        return hash((self.prompt_key, self.answer, self.category, self.source))

    @cached_property
    def prompt_text(self) -> str:
        """The normalised, role-tagged conversation: what dedup, split and prompt_key see."""
        return "\n".join(f"{m['role']}: {_normalise(m['content'])}" for m in self.messages)

    @cached_property
    def prompt_key(self) -> str:
        """sha256 hex of :attr:`prompt_text`; equal for prompts that differ only in case or spacing."""
        return hashlib.sha256(self.prompt_text.encode("utf-8")).hexdigest()

    @property
    def query(self) -> str:
        """The last user message: the text the query classifier sees."""
        return last_user_text(self.messages)

    @property
    def followup(self) -> bool:
        """Whether the example answers a later turn of a conversation (more than one user message):
        the local model must answer it from the history, so it is measured apart from first questions."""
        return len(user_turns(self.messages)) > 1

    def served_messages(self, history: str) -> tuple[dict[str, str], ...]:
        """The prompt the local model is given for this example under ``local.history``: the whole
        conversation, or (``"topic"``) its topic's user turns as one question
        (:func:`hybrid_common.chat.topic_messages`), so training and evaluation see what serving sends."""
        if history != "topic" or self.topic_start is None or not 0 <= self.topic_start < len(self.messages):
            return self.messages
        return tuple(topic_messages(self.messages, self.topic_start))

    def as_served(self, history: str) -> Example:
        """This example with :meth:`served_messages` as its conversation (what training renders)."""
        messages = self.served_messages(history)
        return self if messages is self.messages else dataclasses.replace(self, messages=messages, topic_start=None)

    def to_dict(self) -> dict[str, Any]:
        out = {
            "messages": [dict(m) for m in self.messages],
            "answer": self.answer,
            "category": self.category,
            "source": self.source,
        }
        if self.topic_start is not None:
            out["topic_start"] = self.topic_start
        return out

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> Example:
        """Inverse of :meth:`to_dict`; raises ConfigError naming what is malformed."""
        if not isinstance(data, Mapping):
            raise ConfigError(f"an example must be a JSON object, got {type(data).__name__}")
        messages = _check_messages(data.get("messages"))
        answer, category = data.get("answer"), data.get("category")
        if not isinstance(answer, str):
            raise ConfigError("example field 'answer' must be a string")
        if category is not None and not isinstance(category, str):
            raise ConfigError("example field 'category' must be a string or null")
        topic_start = data.get("topic_start")
        if topic_start is not None and (isinstance(topic_start, bool) or not isinstance(topic_start, int) or not 0 <= topic_start < len(messages)):
            raise ConfigError("example field 'topic_start' must be the index of one of its messages, or absent")
        return cls(tuple(messages), answer, category, str(data.get("source", "")), topic_start=topic_start)


def _check_messages(messages: Any) -> list[dict[str, str]]:
    if not isinstance(messages, list) or not messages:
        raise ConfigError("'messages' must be a non-empty list")
    for i, m in enumerate(messages):
        if not isinstance(m, Mapping) or m.get("role") not in _ROLES or not isinstance(m.get("content"), str):
            raise ConfigError(
                f"messages[{i}] must be an object with role in {sorted(_ROLES)} and string content, got {m!r:.120}"
            )
    return [{"role": m["role"], "content": m["content"]} for m in messages]


# ---------------------------------------------------------------------------- filters


class DatasetFilters(BaseModel):
    """What ``clean`` keeps and how the evaluation split is drawn."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    min_answer_chars: int = Field(20, ge=0, description="Shorter answers teach little; dropped.")
    max_answer_chars: int = Field(4000, ge=1, description="Longer answers exceed the training context; dropped.")
    max_prompt_chars: int = Field(4000, ge=1, description="Conversations longer than this (all messages) are dropped.")
    near_duplicate_threshold: float = Field(
        0.9,
        gt=0.0,
        le=1.0,
        description="Jaccard similarity of word shingles of the normalised prompt at or above which a later "
        "example is a near duplicate of an earlier one (for a follow-up, its last user turn must be one too); "
        "1.0 disables near-duplicate removal.",
    )
    shingle_words: int = Field(3, ge=1, le=10, description="Words per shingle for near-duplicate detection.")
    scrub_pii: bool = Field(True, description="Replace PII matches in prompts and answers with [NAME].")
    pii_patterns: dict[str, str] = Field(
        default_factory=lambda: dict(DEFAULT_PII_PATTERNS),
        description="Named regexes scrubbed as [NAME] (upper case); card numbers only with an issuer prefix and Luhn checksum, as in routing.",
    )
    drop_degenerate: bool = Field(
        True, description="Drop answers the serving degeneration guard rejects (empty, looping, echoing the question)."
    )
    eval_percent: int = Field(10, ge=0, le=100, description="Share of prompt-hash buckets (0..99) held out for evaluation.")
    max_eval_examples: int = Field(
        100, ge=0, description="Size cap of the frozen block of examples without a category (no classifier yet)."
    )
    min_eval_per_category: int = Field(
        30, ge=1, description="A category gets its frozen evaluation block once this many of its examples can be frozen."
    )
    max_eval_per_category: int = Field(50, ge=1, description="Size cap of one category's frozen evaluation block.")
    split_salt: str = Field("", description="Salt of the split hash; changing it draws a different split.")

    @field_validator("pii_patterns")
    @classmethod
    def _compile(cls, patterns: dict[str, str]) -> dict[str, str]:
        return validate_patterns(patterns)


def _scrubbed(example: Example, pii: PiiMatcher) -> Example:
    """The example with PII in every message and the answer replaced by ``[NAME]``."""
    messages = tuple({"role": m["role"], "content": pii.redact(m["content"])} for m in example.messages)
    return dataclasses.replace(example, messages=messages, answer=pii.redact(example.answer))


# ---------------------------------------------------------------------------- sources


def examples_from_log(
    log_or_path: TrafficLog | str | Path,
    *,
    categories: Iterable[str] | None = None,
    include_local: bool = False,
    label_unlabelled: Callable[[list[str]], Sequence[str | None]] | None = None,
) -> list[Example]:
    """Teacher examples from the traffic log: complete, error-free cloud answers, and corrections.

    ``label_unlabelled`` (a classifier's ``predict``) labels rows logged without a category:
    traffic logged before any classifier existed, which ``router categories apply`` has since
    given categories. Rows it sends to ``None`` stay out-of-scope.

    Local answers are included only with ``include_local`` and only when someone accepted them
    (``client.feedback(id, accepted=True)``, or the older ``metadata["feedback"] == "accepted"``):
    the model must never train on its own unreviewed output. A ``correction`` given as feedback
    replaces the logged answer, whichever tier gave it; an answer rejected by feedback is never
    learnt. Rows with tool or non-text messages are skipped, as the local model serves neither.
    For a long log, :func:`iter_examples_from_log` yields the same examples a page at a time.
    """
    return list(
        iter_examples_from_log(log_or_path, categories=categories, include_local=include_local, label_unlabelled=label_unlabelled)
    )


def iter_examples_from_log(
    log_or_path: TrafficLog | str | Path,
    *,
    categories: Iterable[str] | None = None,
    include_local: bool = False,
    label_unlabelled: Callable[[list[str]], Sequence[str | None]] | None = None,
    page_size: int = 2000,
) -> Iterator[Example]:
    """:func:`examples_from_log`, read page by page: memory holds one page of rows, whatever the log's size."""
    wanted = None if categories is None else frozenset(categories)

    def collect(log: TrafficLog) -> Iterator[Example]:
        feedback = log.feedback()
        for page in log.pages(page_size=page_size):
            records = [record for _, record in page]
            if label_unlabelled is not None:
                _label(records, label_unlabelled)
            for r in records:
                if (e := _log_example(r, wanted, include_local, feedback.get(r.id))) is not None:
                    yield e

    if isinstance(log_or_path, TrafficLog):
        yield from collect(log_or_path)
        return
    from router.log_stores import is_database_url

    if not is_database_url(log_or_path) and not Path(log_or_path).is_file():
        raise ArtifactError(f"no traffic log at {log_or_path}")
    with TrafficLog(log_or_path, spool=False) as log:
        yield from collect(log)


def _label(records: list[LogRecord], predict: Callable[[list[str]], Sequence[str | None]]) -> None:
    """Set the category of rows logged without one, from their last user message, in one batch."""
    unlabelled, queries = [], []
    for record in records:
        query = logged_query(record.messages) if record.category is None else None
        if query:
            unlabelled.append(record)
            queries.append(query)
    if queries:
        for record, label in zip(unlabelled, predict(queries), strict=True):
            record.category = label


def _log_example(
    record: LogRecord, categories: frozenset[str] | None, include_local: bool, feedback: Mapping[str, Any] | None = None
) -> Example | None:
    if categories is not None and record.category not in categories:
        return None
    if not record.messages:
        return None
    correction = (feedback or {}).get("correction")
    if correction:
        answer, source = correction, f"log:{record.id}:correction"
    else:
        if (feedback or {}).get("accepted") is False:
            return None  # rejected by a user: not a teacher answer, whichever tier gave it
        if record.error_type is not None or not record.response or not record.response.strip():
            return None
        if record.finish_reason != "stop":
            return None
        if record.tier != "cloud":
            accepted = (record.metadata or {}).get("feedback") == "accepted" or (feedback or {}).get("accepted") is True
            if not (include_local and record.tier == "local" and accepted):
                return None
        answer, source = record.response, f"log:{record.id}"
    messages = []
    for m in record.messages:
        content = m.get("content") if isinstance(m, dict) else None
        if not is_text_only(content) or m.get("role") not in _ROLES:
            logger.debug("log row %s skipped: unsupported message %r", record.id, m)
            return None
        messages.append({"role": m["role"], "content": message_text(content)})
    return Example(tuple(messages), answer, record.category, source, topic_start=record.topic_start)


def examples_from_jsonl(path: str | Path, *, category: str | None = None) -> list[Example]:
    """Examples from chat JSONL: ``{"messages": [..., {"role": "assistant", ...}], "category"?}`` per line.

    The last message is the answer; ``category`` is used for lines that carry none.
    """
    path = Path(path)
    examples = []
    for number, line in enumerate(_read_lines(path), start=1):
        if not line.strip():
            continue
        where = f"{path}:{number}"
        try:
            data = json.loads(line)
        except json.JSONDecodeError as err:
            raise ConfigError(f"{where}: not valid JSON ({err.msg})") from err
        if not isinstance(data, dict):
            raise ConfigError(f"{where}: expected a JSON object with 'messages'")
        try:
            messages = _check_messages(data.get("messages"))
        except ConfigError as err:
            raise ConfigError(f"{where}: {err}") from err
        if messages[-1]["role"] != "assistant" or len(messages) < 2:
            raise ConfigError(f"{where}: the last message must be the assistant answer, after at least one prompt message")
        line_category = data.get("category", category)
        if line_category is not None and not isinstance(line_category, str):
            raise ConfigError(f"{where}: 'category' must be a string")
        examples.append(Example(tuple(messages[:-1]), messages[-1]["content"], line_category, f"jsonl:{path.name}:{number}"))
    return examples


def _read_lines(path: Path) -> list[str]:
    try:
        return path.read_text(encoding="utf-8").splitlines()
    except FileNotFoundError as err:
        raise ArtifactError(f"no such dataset file: {path}") from err
    except (OSError, UnicodeDecodeError) as err:
        raise ArtifactError(f"cannot read {path}: {err}") from err


def examples_from_csv(
    path: str | Path,
    *,
    query_column: str = "query",
    answer_column: str = "answer",
    category_column: str | None = None,
) -> list[Example]:
    """Single-turn examples from a CSV with a header row (e.g. Bitext: instruction, response, category)."""
    path = Path(path)
    try:
        with path.open(newline="", encoding="utf-8") as fh:
            reader = csv.DictReader(fh)
            header = reader.fieldnames or []
            missing = [c for c in (query_column, answer_column, category_column) if c is not None and c not in header]
            if missing:
                raise ConfigError(f"{path}: missing column(s) {missing}; the header has {header}")
            examples = []
            for number, row in enumerate(reader, start=1):
                query, answer = row.get(query_column), row.get(answer_column)
                if not query or not query.strip() or answer is None:
                    raise ConfigError(
                        f"{path}: data row {number} (line {reader.line_num}) has an empty {query_column!r} "
                        f"or no {answer_column!r}"
                    )
                category = (row.get(category_column) or None) if category_column else None
                examples.append(Example(({"role": "user", "content": query},), answer, category, f"csv:{path.name}:{number}"))
    except FileNotFoundError as err:
        raise ArtifactError(f"no such dataset file: {path}") from err
    except (UnicodeDecodeError, csv.Error) as err:
        raise ArtifactError(f"cannot read {path} as UTF-8 CSV: {err}") from err
    return examples


# ---------------------------------------------------------------------------- near duplicates

_NUM_PERM = 128
_CHUNK_SHINGLES = 65536


def _shingles(text: str, n: int) -> frozenset[str]:
    words = text.split()
    if len(words) <= n:
        return frozenset([" ".join(words)]) if words else frozenset()
    return frozenset(" ".join(words[i : i + n]) for i in range(len(words) - n + 1))


def _jaccard(a: frozenset[str], b: frozenset[str]) -> float:
    return len(a & b) / len(a | b) if a or b else 1.0


def _band_shape(threshold: float) -> tuple[int, int]:
    """(bands, rows): the most selective banding that still finds a pair at ``threshold`` with p ≥ 0.99."""
    for rows in (32, 16, 8, 4, 2, 1):
        bands = _NUM_PERM // rows
        if 1.0 - (1.0 - threshold**rows) ** bands >= 0.99:
            return bands, rows
    return _NUM_PERM, 1


def _signatures(shingle_sets: Sequence[frozenset[str]]) -> np.ndarray:
    """MinHash signatures (n × 128, uint32) by multiply-shift hashing of 64-bit shingle hashes.

    Deterministic: shingles are hashed with blake2b and the permutations come from a fixed seed.
    Empty sets get an all-max signature; callers skip them.
    """
    rng = np.random.default_rng(20240229)
    a = rng.integers(1, 2**63, size=_NUM_PERM, dtype=np.uint64) * np.uint64(2) + np.uint64(1)  # odd multipliers
    b = rng.integers(0, 2**63, size=_NUM_PERM, dtype=np.uint64)
    out = np.full((len(shingle_sets), _NUM_PERM), np.iinfo(np.uint32).max, dtype=np.uint32)
    start = 0
    while start < len(shingle_sets):
        stop, total = start, 0
        while stop < len(shingle_sets) and (total == 0 or total + len(shingle_sets[stop]) <= _CHUNK_SHINGLES):
            total += len(shingle_sets[stop])
            stop += 1
        rows = [i for i in range(start, stop) if shingle_sets[i]]
        if rows:
            hashes = np.fromiter(
                (
                    int.from_bytes(hashlib.blake2b(s.encode("utf-8"), digest_size=8).digest(), "little")
                    for i in rows
                    for s in sorted(shingle_sets[i])
                ),
                dtype=np.uint64,
                count=sum(len(shingle_sets[i]) for i in rows),
            )
            # (a*x + b) mod 2**64 with unsigned wrap-around; the high 32 bits form a universal hash.
            permuted = ((hashes[:, None] * a[None, :] + b[None, :]) >> np.uint64(32)).astype(np.uint32)
            offsets = np.cumsum([0] + [len(shingle_sets[i]) for i in rows[:-1]])
            out[rows] = np.minimum.reduceat(permuted, offsets, axis=0)
        start = stop
    return out


_Turn = tuple[bool, frozenset[str]]  # (is a follow-up, shingles of the last user turn)


def _last_turn(example: Example, n: int) -> _Turn:
    return example.followup, _shingles(_normalise(example.query), n)


class _NearDuplicateIndex:
    """LSH buckets over MinHash signatures; a hit is confirmed by the exact Jaccard similarity.

    A follow-up is a near duplicate only when its last user turn is one too: conversations that
    share a long history (the same question, a cached answer) but ask different things next are
    different examples, and the whole-conversation shingles alone would be dominated by the history.
    """

    def __init__(self, threshold: float) -> None:
        self.threshold = threshold
        self._bands, self._rows = _band_shape(threshold)
        self._buckets: list[dict[bytes, list[int]]] = [{} for _ in range(self._bands)]
        self._sets: list[frozenset[str]] = []
        self._turns: list[_Turn] = []

    def _keys(self, signature: np.ndarray) -> list[bytes]:
        raw, width = signature.tobytes(), self._rows * signature.itemsize
        return [raw[i * width : (i + 1) * width] for i in range(self._bands)]

    def _same_turn(self, turn: _Turn, other: _Turn) -> bool:
        if not (turn[0] or other[0]):
            return True  # two single questions: the whole prompt is the question
        return _jaccard(turn[1], other[1]) >= self.threshold

    def match(self, shingles: frozenset[str], signature: np.ndarray, turn: _Turn) -> bool:
        if not shingles:
            return False
        seen: set[int] = set()
        for bucket, key in zip(self._buckets, self._keys(signature), strict=True):
            for j in bucket.get(key, ()):
                if j not in seen:
                    seen.add(j)
                    if _jaccard(shingles, self._sets[j]) >= self.threshold and self._same_turn(turn, self._turns[j]):
                        return True
        return False

    def add(self, shingles: frozenset[str], signature: np.ndarray, turn: _Turn) -> None:
        if not shingles:
            return
        index = len(self._sets)
        self._sets.append(shingles)
        self._turns.append(turn)
        for bucket, key in zip(self._buckets, self._keys(signature), strict=True):
            bucket.setdefault(key, []).append(index)


def _progress(iterable: Iterable[Any], total: int, desc: str) -> Iterable[Any]:
    if total <= _PROGRESS_MIN_ROWS:
        return iterable
    from tqdm.auto import tqdm

    return tqdm(iterable, total=total, desc=desc, disable=None)  # disable=None: silent when not a TTY


def _drop_near_duplicates(
    examples: Sequence[Example], threshold: float, shingle_words: int, reference: Sequence[Example] = ()
) -> list[bool]:
    """Keep-mask: False for an example near-duplicating ``reference`` or an earlier kept example."""
    index = _NearDuplicateIndex(threshold)
    ref_sets = [_shingles(e.prompt_text, shingle_words) for e in reference]
    for e, s, sig in zip(reference, ref_sets, _signatures(ref_sets), strict=True):
        index.add(s, sig, _last_turn(e, shingle_words))
    sets = [_shingles(e.prompt_text, shingle_words) for e in examples]
    keep = []
    rows = zip(examples, sets, _signatures(sets), strict=True)
    for e, s, sig in _progress(rows, len(sets), "near-duplicates"):
        turn = _last_turn(e, shingle_words)
        duplicate = index.match(s, sig, turn)
        keep.append(not duplicate)
        if not duplicate:
            index.add(s, sig, turn)
    return keep


# ---------------------------------------------------------------------------- cleaning and split


def clean(
    examples: Iterable[Example], filters: DatasetFilters | None = None, *, cleaned: Iterable[Example] = ()
) -> tuple[list[Example], dict[str, int]]:
    """Scrub, filter and deduplicate (keeping the first of duplicates); returns kept examples and drops per reason.

    ``cleaned`` are examples already scrubbed and filtered with the same filters (a log pool's):
    they are not judged again, the costly part, but count as read first, so they win exact
    duplicates and take part in the near-duplicate pass exactly as if they had been cleaned here.
    """
    filters = filters or DatasetFilters()
    pii = PiiMatcher(filters.pii_patterns) if filters.scrub_pii else None
    dropped = dict.fromkeys(DROP_REASONS, 0)
    seen: set[str] = set()
    kept: list[Example] = []
    for example in cleaned:
        if example.prompt_key in seen:
            dropped["duplicate"] += 1
            continue
        seen.add(example.prompt_key)
        kept.append(example)
    for example in examples:
        if pii is not None:
            example = _scrubbed(example, pii)
        if example.prompt_key in seen:  # a prompt already kept: no need to judge this answer (the guard is the costly part)
            dropped["duplicate"] += 1
            continue
        reason = _filter_reason(example, filters)
        if reason is None:
            seen.add(example.prompt_key)
        if reason is not None:
            dropped[reason] += 1
            continue
        kept.append(example)
    if filters.near_duplicate_threshold < 1.0 and kept:
        mask = _drop_near_duplicates(kept, filters.near_duplicate_threshold, filters.shingle_words)
        dropped["near_duplicate"] = mask.count(False)
        kept = [e for e, k in zip(kept, mask, strict=True) if k]
    return kept, dropped


def _filter_reason(example: Example, filters: DatasetFilters) -> str | None:
    if not example.messages or not example.query.strip():
        return "no_prompt"
    if sum(len(m["content"]) for m in example.messages) > filters.max_prompt_chars:
        return "prompt_too_long"
    if len(example.answer) < filters.min_answer_chars:
        return "answer_too_short"
    if len(example.answer) > filters.max_answer_chars:
        return "answer_too_long"
    if filters.drop_degenerate:
        # As served: in a conversation, an answer replaying an earlier turn is degenerate too.
        guard = DegenerationGuard(question=example.query, earlier=earlier_turns(example.messages))
        if guard.check_text(example.answer):
            return "degenerate"
    return None


def split_bucket(example: Example, salt: str = "") -> int:
    """Bucket 0..99 from the prompt hash: the split never depends on row order or data volume."""
    digest = hashlib.sha256(f"{salt}\x00{example.prompt_key}".encode()).digest()
    return int.from_bytes(digest[:8], "big") % 100


def _is_eval(example: Example, filters: DatasetFilters) -> bool:
    return split_bucket(example, filters.split_salt) < filters.eval_percent


# ---------------------------------------------------------------------------- files


def _write_file(path: Path, text: str) -> None:
    """Write and fsync a file inside a staging directory (the directory rename is the atomic step)."""
    with path.open("w", encoding="utf-8", newline="\n") as fh:
        fh.write(text)
        fh.flush()
        os.fsync(fh.fileno())


def _jsonl(examples: Iterable[Example]) -> str:
    return "".join(json.dumps(e.to_dict(), ensure_ascii=False, sort_keys=True) + "\n" for e in examples)


def _read_jsonl(path: Path) -> list[Example]:
    examples = []
    for number, line in enumerate(_read_lines(path), start=1):
        if line.strip():
            try:
                examples.append(Example.from_dict(json.loads(line)))
            except (json.JSONDecodeError, ConfigError) as err:
                raise ArtifactIntegrityError(f"{path}:{number}: malformed example: {err}") from err
    return examples


def _read_json(path: Path) -> dict[str, Any]:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError as err:
        raise ArtifactError(f"missing {path}") from err
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as err:
        raise ArtifactIntegrityError(f"{path} is not valid JSON: {err}") from err
    if not isinstance(data, dict):
        raise ArtifactIntegrityError(f"{path} is not a JSON object")
    return data


def _now() -> str:
    return datetime.now(UTC).isoformat(timespec="seconds")


# ---------------------------------------------------------------------------- frozen evaluation set


UNCATEGORISED = "(uncategorised)"  # the block key of examples logged without a category


def _block_key(category: str | None) -> str:
    return UNCATEGORISED if category is None else category


class FrozenEvalSet:
    """The evaluation set: one block per category, each chosen once and then never changed.

    A category's block is frozen the first time at least ``min_eval_per_category`` of its
    examples fall in the evaluation buckets (up to ``max_eval_per_category`` of them, the lowest
    prompt keys); a category seen later adds its own block and leaves the others untouched, so a
    version's score on a category stays comparable with every other version's. Examples without a
    category form one block of up to ``max_eval_examples``. Every example comes from the
    evaluation buckets, which training never sees.

    Stored as ``root/eval/frozen.jsonl`` (the blocks, in the order they were frozen, so a new block
    only appends) and ``frozen.json`` (per block: category, count, sha256 of its lines; the whole
    file's sha256). The manifest is written last, so it marks a complete set. A set written
    before blocks existed loads as one legacy block; new categories are added beside it.
    """

    def __init__(self, path: Path, examples: list[Example], manifest: dict[str, Any]) -> None:
        self.path = path
        self.examples = examples
        self.manifest = manifest

    @property
    def sha256(self) -> str:
        return str(self.manifest["sha256"])

    @property
    def prompt_keys(self) -> frozenset[str]:
        return frozenset(e.prompt_key for e in self.examples)

    @property
    def blocks(self) -> list[dict[str, Any]]:
        """``{"category", "count", "sha256", "created_at"}`` per block, in file order."""
        return list(self.manifest.get("blocks", []))

    def by_category(self) -> dict[str | None, list[Example]]:
        """Frozen examples grouped by category (None: uncategorised)."""
        groups: dict[str | None, list[Example]] = {}
        for example in self.examples:
            groups.setdefault(example.category, []).append(example)
        return groups

    def __len__(self) -> int:
        return len(self.examples)

    @staticmethod
    def _paths(root: Path) -> tuple[Path, Path]:
        return root / "eval" / "frozen.jsonl", root / "eval" / "frozen.json"

    @classmethod
    def exists(cls, root: str | Path) -> bool:
        return cls._paths(Path(root))[1].is_file()

    @classmethod
    def load(cls, root: str | Path) -> FrozenEvalSet:
        """Load and verify the frozen set under ``root``; ArtifactIntegrityError if it was altered."""
        data, meta = cls._paths(Path(root))
        manifest = _read_json(meta)
        pending = data.with_name(data.name + ".next")
        if pending.is_file():  # an append was interrupted: finish it if its manifest was written, else drop it
            if sha256_file(pending) == manifest.get("sha256"):
                os.replace(pending, data)
            else:
                pending.unlink()
        if not data.is_file():
            raise ArtifactIntegrityError(f"{meta} exists but {data} is missing")
        if sha256_file(data) != manifest.get("sha256"):
            raise ArtifactIntegrityError(f"{data} does not match the checksum in {meta}; the frozen eval set was altered")
        examples = _read_jsonl(data)
        if len(examples) != manifest.get("count"):
            raise ArtifactIntegrityError(f"{data} holds {len(examples)} examples, {meta} says {manifest.get('count')}")
        if "blocks" not in manifest:  # written before per-category blocks: one legacy block
            manifest = {**manifest, "blocks": [{"category": None, "legacy": True, "count": len(examples)}]}
        start = 0
        for block in manifest["blocks"]:
            lines = examples[start : start + int(block["count"])]
            if "sha256" in block and hashlib.sha256(_jsonl(lines).encode()).hexdigest() != block["sha256"]:
                raise ArtifactIntegrityError(f"block {block['category']!r} of {data} does not match its checksum")
            start += int(block["count"])
        return cls(data, examples, manifest)

    @classmethod
    def load_or_create(
        cls, root: str | Path, candidates: Iterable[Example], *, filters: DatasetFilters | None = None
    ) -> FrozenEvalSet:
        """The frozen set under ``root``, with a new block for each category that has become eligible.

        Candidates should already be cleaned. Existing blocks are never changed; the choice within
        a new block is the lowest prompt keys, so it does not depend on candidate order.
        """
        root = Path(root)
        filters = filters or DatasetFilters()
        current = cls.load(root) if cls.exists(root) else None
        examples = list(current.examples) if current else []
        blocks = current.blocks if current else []
        frozen_keys = {e.prompt_key for e in examples}
        has_block = {_block_key(b["category"]) for b in blocks if not b.get("legacy")}
        legacy_counts: dict[str, int] = {}
        for e in examples:
            legacy_counts[_block_key(e.category)] = legacy_counts.get(_block_key(e.category), 0) + 1

        eligible: dict[str, list[Example]] = {}
        for e in candidates:
            if _is_eval(e, filters) and e.prompt_key not in frozen_keys:
                eligible.setdefault(_block_key(e.category), []).append(e)
        new_blocks: list[tuple[dict[str, Any], list[Example]]] = []
        for key in sorted(eligible):
            if key in has_block:
                continue
            pool = sorted({e.prompt_key: e for e in eligible[key]}.values(), key=lambda e: e.prompt_key)
            already = legacy_counts.get(key, 0)
            if key == UNCATEGORISED:
                chosen = pool[: max(0, filters.max_eval_examples - already)]
                if not chosen:
                    continue
            else:
                if already + len(pool) < filters.min_eval_per_category:
                    continue  # too few yet: the category waits for more traffic, unevaluated
                chosen = pool[: max(0, filters.max_eval_per_category - already)]
            category = None if key == UNCATEGORISED else key
            block = {"category": category, "count": len(chosen), "sha256": hashlib.sha256(_jsonl(chosen).encode()).hexdigest(), "created_at": _now()}
            new_blocks.append((block, chosen))
        data, meta = cls._paths(root)
        if not new_blocks:
            if current is not None:
                return current
            # Freezing an empty set would leave training without an evaluation set for good.
            return cls(data, [], {"sha256": hashlib.sha256(b"").hexdigest(), "created_at": None, "count": 0, "blocks": []})
        for block, chosen in new_blocks:
            examples += chosen
            blocks.append(block)
        # New data under a side name, then the manifest naming its checksum, then the rename: a crash
        # at any point leaves either the old set or the new one (load() finishes or drops the append).
        pending = data.with_name(data.name + ".next")
        write_text_atomic(pending, _jsonl(examples))
        manifest = {
            "format_version": 2,
            "sha256": sha256_file(pending),
            "created_at": current.manifest.get("created_at") if current else _now(),
            "count": len(examples),
            "blocks": blocks,
            "eval_percent": filters.eval_percent,
            "split_salt": filters.split_salt,
        }
        write_text_atomic(meta, json.dumps(manifest, indent=2, sort_keys=True) + "\n")
        os.replace(pending, data)
        fsync_dir(data.parent)
        for block, _ in new_blocks:
            logger.info("froze %d evaluation examples for category %s at %s", block["count"], block["category"], data)
        return cls(data, examples, manifest)


# ---------------------------------------------------------------------------- snapshots

_TRAIN_FILE = "train.jsonl"
_EVAL_FILE = "eval.jsonl"
_MANIFEST = "manifest.json"
_FORMAT = "hybrid-router/dataset-snapshot"


class DatasetSnapshot:
    """An immutable, checksummed train set plus the frozen eval set it was built against."""

    def __init__(self, path: Path, manifest: dict[str, Any]) -> None:
        self.path = path
        self.manifest = manifest

    @property
    def id(self) -> str:
        return str(self.manifest["id"])

    @cached_property
    def train(self) -> list[Example]:
        return _read_jsonl(self.path / _TRAIN_FILE)

    @cached_property
    def eval(self) -> list[Example]:
        return _read_jsonl(self.path / _EVAL_FILE)

    @classmethod
    def load(cls, path: str | Path) -> DatasetSnapshot:
        """Open a snapshot directory, verifying the manifest digest and every file's sha256."""
        path = Path(path)
        manifest = _read_json(path / _MANIFEST)
        if manifest.get("format") != _FORMAT:
            raise ArtifactIntegrityError(f"{path} is not a {_FORMAT} directory")
        if manifest.get(MANIFEST_DIGEST_KEY) != manifest_digest(manifest):
            raise ArtifactIntegrityError(f"{path / _MANIFEST} was modified after it was written (digest mismatch)")
        files = manifest.get("files")
        if not isinstance(files, dict) or set(files) != {_TRAIN_FILE, _EVAL_FILE}:
            raise ArtifactIntegrityError(f"{path / _MANIFEST} does not list {_TRAIN_FILE} and {_EVAL_FILE}")
        for name, expected in files.items():
            file = path / name
            if not file.is_file():
                raise ArtifactIntegrityError(f"{path} is missing {name}")
            if sha256_file(file) != expected:
                raise ArtifactIntegrityError(f"checksum mismatch for {file}; the snapshot was altered")
        return cls(path, manifest)


def prune_snapshots(root: str | Path, *, keep: Iterable[str] = (), keep_latest: int = 3) -> list[str]:
    """Delete dataset snapshots under ``root/datasets`` except ``keep`` (e.g. those a registry version
    was trained on) and the ``keep_latest`` newest; returns the ids deleted.

    Every retrain writes a snapshot of the whole cleaned dataset; without pruning a year of daily
    retrains keeps a year of copies. The frozen evaluation set lives apart and is never touched.
    """
    datasets = Path(root) / "datasets"
    if not datasets.is_dir():
        return []
    found = []
    for manifest in datasets.glob(f"*/{_MANIFEST}"):
        try:
            created = json.loads(manifest.read_text(encoding="utf-8")).get("created_at", "")
        except (OSError, ValueError):
            continue  # unreadable: not ours to judge, leave it
        found.append((created, manifest.stat().st_mtime_ns, manifest.parent))
    found.sort(reverse=True)
    protected = set(keep) | {path.name for _, _, path in found[: max(0, keep_latest)]}
    deleted = []
    for _, _, path in found:
        if path.name not in protected:
            shutil.rmtree(path)
            deleted.append(path.name)
    return deleted


class _Counted:
    """An iterable that counts what went through it."""

    def __init__(self, items: Iterable[Example]) -> None:
        self._items = items
        self.n = 0

    def __iter__(self) -> Iterator[Example]:
        for item in self._items:
            self.n += 1
            yield item


def build_snapshot(
    examples: Iterable[Example],
    root: str | Path,
    *,
    filters: DatasetFilters | None = None,
    seed: int = 0,
    sources: Sequence[str] = (),
    cleaned: Sequence[Example] = (),
    cleaned_dropped: Mapping[str, int] | None = None,
) -> DatasetSnapshot:
    """Clean, split and write ``root/datasets/<id>/``; the same inputs give the same (reused) snapshot.

    The train set excludes every prompt in, or near-duplicating, the frozen eval set or the
    current eval bucket, so no evaluation prompt leaks into training. ``sources`` describes
    where the examples came from (e.g. the log path) and is recorded in the manifest.
    ``cleaned`` are examples cleaned earlier with the same filters (a :class:`~finetune.log_pool.LogPool`'s),
    placed before ``examples`` (see :func:`clean`): the snapshot is the one cleaning them here
    would give. ``cleaned_dropped`` (what cleaning them dropped) is added to the manifest's counts.
    """
    root = Path(root)
    filters = filters or DatasetFilters()
    counted = _Counted(examples)  # streamed: only what survives cleaning is held in memory
    kept, dropped = clean(counted, filters, cleaned=cleaned)
    for reason, n in (cleaned_dropped or {}).items():
        dropped[reason] = dropped.get(reason, 0) + n
    frozen = FrozenEvalSet.load_or_create(root, kept, filters=filters)

    eval_bucket = [e for e in kept if _is_eval(e, filters)]
    train = [e for e in kept if not _is_eval(e, filters) and e.prompt_key not in frozen.prompt_keys]
    leaked = len(kept) - len(eval_bucket) - len(train)
    if filters.near_duplicate_threshold < 1.0 and train:
        mask = _drop_near_duplicates(
            train, filters.near_duplicate_threshold, filters.shingle_words, reference=[*frozen.examples, *eval_bucket]
        )
        leaked += mask.count(False)
        train = [e for e, k in zip(train, mask, strict=True) if k]
    train.sort(key=lambda e: (e.prompt_key, e.source))

    train_text, eval_text = _jsonl(train), _jsonl(frozen.examples)
    identity = json.dumps(
        {"train": train_text, "eval": eval_text, "filters": filters.model_dump(mode="json"), "seed": seed},
        sort_keys=True,
        separators=(",", ":"),
    )
    snapshot_id = hashlib.sha256(identity.encode("utf-8")).hexdigest()[:16]
    path = root / "datasets" / snapshot_id
    if (path / _MANIFEST).is_file():
        return DatasetSnapshot.load(path)

    manifest: dict[str, Any] = {
        "format": _FORMAT,
        "format_version": 1,
        "id": snapshot_id,
        "created_at": _now(),
        "sources": list(sources),
        "records": {"train": [e.source for e in train], "eval": [e.source for e in frozen.examples]},
        "filters": filters.model_dump(mode="json"),
        "seed": seed,
        "counts": {
            "input": counted.n + len(cleaned),  # examples read this run plus those given already cleaned
            "input_precleaned": len(cleaned),
            "cleaned": len(kept),
            "train": len(train),
            "eval": len(frozen.examples),
            "eval_bucket": len(eval_bucket),
            "excluded_eval_overlap": leaked,
        },
        "dropped": dropped,
        "frozen_eval_sha256": frozen.sha256,
    }
    path.parent.mkdir(parents=True, exist_ok=True)
    staging = path.parent / f".{snapshot_id}.tmp-{uuid.uuid4().hex}"
    staging.mkdir()
    try:
        _write_file(staging / _TRAIN_FILE, train_text)
        _write_file(staging / _EVAL_FILE, eval_text)
        manifest["files"] = {name: sha256_file(staging / name) for name in (_TRAIN_FILE, _EVAL_FILE)}
        manifest[MANIFEST_DIGEST_KEY] = manifest_digest(manifest)
        _write_file(staging / _MANIFEST, json.dumps(manifest, indent=2, sort_keys=True) + "\n")
        for name in (_TRAIN_FILE, _EVAL_FILE, _MANIFEST):
            os.chmod(staging / name, stat.S_IRUSR | stat.S_IRGRP | stat.S_IROTH)
        fsync_dir(staging)
        try:
            os.rename(staging, path)
        except OSError:
            if not (path / _MANIFEST).is_file():  # not a concurrent build of the same snapshot
                raise
            shutil.rmtree(staging, ignore_errors=True)
            return DatasetSnapshot.load(path)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    fsync_dir(path.parent)
    logger.info("dataset snapshot %s: %d train, %d eval examples", snapshot_id, len(train), len(frozen.examples))
    return DatasetSnapshot(path, manifest)
