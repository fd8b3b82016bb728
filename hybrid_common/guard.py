"""Detect degenerate local answers while they are generated, so they can go to the cloud instead.

Small models fail in recognisable ways, and an untuned base model shows them all (read from the
traffic log of ``make demo``): it starts by repeating the question, often looping on it with a
stray token (``where is my order? mendatanguser where is my order? …``); it repeats a span back
to back (``(UK) (UK) (UK)``); it paraphrases its own loop so that no two copies are equal; it emits
runs of separators (``| | | |``); it drifts into a script the question was not written in; or it
says nothing. A tuned one still miscopies numbers from the question (order 3707955617 answered
as 370795561700, "$3" as "$3000"). Each is a check here, run on the growing text after every
piece, costing microseconds against a token's milliseconds. Long, well-formed answers that legitimately repeat a
phrase or a ``{{Placeholder}}`` (Bitext's reference answers) pass: the repetition checks look for
*adjacent* copies or for a few phrases covering most of the answer, never for a phrase said twice.
"""

from __future__ import annotations

import re
from collections import Counter
from collections.abc import Sequence
from difflib import SequenceMatcher

__all__ = ["DegenerationGuard"]

_SPACE = re.compile(r"\s+")
_WORD = re.compile(r"\{\{[^}]*\}\}|\w+", re.UNICODE)  # a {{Placeholder}} counts as one word
_MAX_UNIT = 160  # longest back-to-back unit looked for, in characters
_MIN_ADJACENT = 12  # a unit this long (or longer) said twice in a row is a loop
_MIN_REPEATED_SPAN = 12  # shorter units must repeat 3+ times and cover this many characters
_MIN_DIGIT_UNIT = 6  # a unit of digits only must be at least this long (card groups are 4 digits)
_ECHO_SIMILARITY = 0.75  # word-level similarity of the answer's opening to the question
_ECHO_SLACK = 2  # openings up to this many words longer or shorter than the question are compared
_COVERAGE_MIN_WORDS = 24  # the paraphrased-loop check needs this many words to judge
_COVERAGE_NGRAM = 3
_COVERAGE_REPEATS = 3
_COVERAGE_SHARE = 0.5  # words inside trigrams said 3+ times, as a share of all words
_SEPARATOR_WINDOW = 16  # the last this-many non-space characters ...
_SEPARATOR_SHARE = 0.75  # ... being mostly punctuation is a separator run
_FOREIGN_CHARS = 2  # characters of a script absent from the question
_EARLIER_TURNS = 6  # a conversation's last this-many earlier messages are echo sources too ...
_EARLIER_WORDS = 16  # ... compared on their opening this many words
_MIN_ECHO_WORDS = 3  # shorter texts are not judged as echoes
_ECHO_OPENING_WORDS = 2  # an echo starts with two of its source's words, copied nearly exactly ...
_NEARLY_SAME_MIN_LETTERS = 3  # ... each with at most one character changed, if it has this many letters
_ECHO_OPENING_STARTS = 2  # ... from its first word or its second (a dropped "please", "minimize")
_NUMBER = re.compile(r"([$€£]?)(\d+)")
_CURRENCY = "$€£"
_DIGITS = "0123456789"
_SENTENCE_END = re.compile(r"[.!?:]\s|\n")
_MIN_NUMBER_DIGITS = 3  # a shorter number ("3 items", "30 days") is judged only as an amount ("$3")
_NEAR_MISS_DIGITS = 5  # numbers this long that differ in one or two digits are one number miscopied
_NEAR_MISS_CHANGES = 2

# Scripts a Latin-script question should not be answered in (base models drift into these).
_SCRIPTS: dict[str, re.Pattern[str]] = {
    "cjk": re.compile(r"[\u3040-\u30ff\u3400-\u4dbf\u4e00-\u9fff\uac00-\ud7af\uf900-\ufaff]"),
    "cyrillic": re.compile(r"[\u0400-\u04ff]"),
    "greek": re.compile(r"[\u0370-\u03ff]"),
    "arabic": re.compile(r"[\u0600-\u06ff\u0750-\u077f]"),
    "hebrew": re.compile(r"[\u0590-\u05ff]"),
    "devanagari": re.compile(r"[\u0900-\u097f]"),
    "thai": re.compile(r"[\u0e00-\u0e7f]"),
}


def _normalise(text: str) -> str:
    return _SPACE.sub(" ", text).strip().lower().rstrip("?.! ")


def _words(text: str) -> list[str]:
    return [w.lower() for w in _WORD.findall(text)]


def _complete_words(text: str) -> list[str]:
    """The words of ``text`` that cannot grow any more (the last one may be cut mid-word by a piece boundary)."""
    matches = list(_WORD.finditer(text))
    if matches and matches[-1].end() == len(text):
        matches.pop()
    return [m.group().lower() for m in matches]


def _common_in_order(a: Sequence[str], b: Sequence[str]) -> int:
    """Longest common subsequence of two word lists: no alignment of them matches more words."""
    previous = [0] * (len(b) + 1)
    for x in a:
        current = [0]
        for j, y in enumerate(b):
            current.append(previous[j] + 1 if x == y else max(previous[j + 1], current[j]))
        previous = current
    return previous[-1]


def _echo_still_possible(words: list[str], source: list[str]) -> bool:
    """Whether an answer opening with ``words`` could, whatever follows, still be judged an echo of ``source``.

    Mirrors :meth:`DegenerationGuard._echo` with the unknown rest at its most echo-like: a
    similarity ratio is ``2 * matches / (len(a) + len(b))``, and the words still to come can add at
    most one match each to the matches the opening already allows (its longest common subsequence
    with the source).
    """
    size, known = len(source), len(words)
    common = _common_in_order(words, source)
    for n in range(max(1, size - _ECHO_SLACK), size + _ECHO_SLACK + 1):
        if n <= known:
            ratio = SequenceMatcher(a=words[:n], b=source, autojunk=False).ratio()
        else:
            ratio = 2 * (common + n - known) / (n + size)
        if ratio >= _ECHO_SIMILARITY:
            return True
    # The final check's short case: the whole answer is the start of the source, cut by the token limit.
    for length in range(max(known, _MIN_ECHO_WORDS, (size + 1) // 2), size - _ECHO_SLACK):
        if (_common_in_order(words, source[:length]) + length - known) / length >= _ECHO_SIMILARITY:
            return True
    return False


def _nearly_same(a: str, b: str) -> bool:
    """The same word, or one character added, dropped or changed ("yeap" / "yep", "order" / "orders");
    words shorter than three letters must be equal ("i" is not "is")."""
    if a == b:
        return True
    if min(len(a), len(b)) < _NEARLY_SAME_MIN_LETTERS:
        return False
    if len(a) == len(b):
        return sum(x != y for x, y in zip(a, b)) == 1
    short, long = sorted((a, b), key=len)
    return len(long) == len(short) + 1 and any(long[:i] + long[i + 1 :] == short for i in range(len(long)))


def _could_become(partial: str, word: str) -> bool:
    """Whether some completion of ``partial`` (a word still being written) is :func:`_nearly_same` as ``word``."""
    if word.startswith(partial):
        return True
    if len(word) < _NEARLY_SAME_MIN_LETTERS:
        return False  # only ``word`` itself would do
    n = len(partial)
    if n <= len(word) and sum(x != y for x, y in zip(partial, word)) <= 1:
        return True  # one letter changed, the rest still to come
    if any(partial[:i] + partial[i + 1 :] == word[: n - 1] for i in range(n)):
        return True  # one letter added
    # One letter dropped (the completion is then one shorter than ``word``, which needs the full letters).
    return len(word) > _NEARLY_SAME_MIN_LETTERS and any(word[:i] + word[i + 1 : n + 1] == partial for i in range(n + 1))


def _numbers(text: str) -> list[tuple[str, str, int]]:
    """``(currency symbol or "", digits, end offset)`` of every run of digits in ``text``."""
    return [(m.group(1), m.group(2), m.end()) for m in _NUMBER.finditer(text)]


def _miscopied(digits: str, symbol: str, given: str, given_symbol: str) -> bool:
    """Whether ``digits`` is ``given`` copied wrong: extended ("3707955617" → "370795561700", "$3" →
    "$3000") or, for a long number, one or two digits changed."""
    if digits == given:
        return False
    if digits.startswith(given) and (len(given) >= _MIN_NUMBER_DIGITS or (symbol and symbol == given_symbol)):
        return True
    return len(digits) == len(given) >= _NEAR_MISS_DIGITS and sum(a != b for a, b in zip(digits, given)) <= _NEAR_MISS_CHANGES


def _opening(text: str, words: int) -> str:
    """The raw text up to the end of its first ``words`` words."""
    end = 0
    for count, match in enumerate(_WORD.finditer(text), start=1):
        end = match.end()
        if count >= words:
            break
    return text[: end + 1]


class DegenerationGuard:
    """Feed it the answer as it grows; ``problem`` names the first degeneration seen, if any.

    ``min_span`` is the characters of exact repetition that count as a loop when the unit is short
    (kept for configurations written before the other checks existed); ``reject_echo`` turns the
    question-echo check on.
    """

    def __init__(
        self, *, question: str = "", earlier: Sequence[str] = (), min_span: int = 48, reject_echo: bool = True
    ) -> None:
        # What an answer must not open by repeating: the question, and in a conversation the earlier
        # turns (a base model continues a chat by replaying the previous answer or question).
        self._echo_sources: list[tuple[list[str], int, str]] = []
        if reject_echo:
            question_words = _words(_normalise(question))
            if question_words:
                self._echo_sources.append((question_words, sum(question.count(c) for c in ",:"), "echoed the question"))
            for turn in earlier[-_EARLIER_TURNS:]:
                words = _words(_normalise(turn))[:_EARLIER_WORDS]
                if len(words) >= _MIN_ECHO_WORDS:
                    marks = sum(_opening(turn, len(words)).count(c) for c in ",:")
                    self._echo_sources.append((words, marks, "echoed an earlier turn"))
        self._echo_pending = set(range(len(self._echo_sources)))
        self._min_span = min_span
        self._allowed_scripts = {name for name, pattern in _SCRIPTS.items() if pattern.search(" ".join([question, *earlier]))}
        # Numbers the caller gave (an order number, an amount): the answer may repeat them, not alter them.
        self._given_numbers = {(symbol, digits) for turn in (question, *earlier) for symbol, digits, _ in _numbers(turn)}
        self._given_digits = {digits for _, digits in self._given_numbers}
        self.problem: str | None = None
        self.rejected_text: str | None = None
        """The text in which ``problem`` was found (live evidence scores it against the answer served instead)."""

    # -- the public checks ----------------------------------------------------------------------

    def check_partial(self, text: str) -> str | None:
        """Check text generated so far; returns the problem once one appears."""
        if self.problem is None:
            self.problem = (
                self._echo(text, final=False)
                or self._separator_run(text)
                or self._foreign_script(text)
                or self._adjacent_repeat(text)
                or self._covered_by_repeats(text)
                or self._altered_number(text, final=False)
            )
            if self.problem is not None:
                self.rejected_text = text
        return self.problem

    def check_final(self, text: str) -> str | None:
        """Check the finished answer for what can only be judged at the end."""
        if self.problem is None:
            if not _normalise(text):
                self.problem = "empty answer"
            else:
                self.problem = self._echo(text, final=True) or self._altered_number(text, final=True)
            if self.problem is not None:
                self.rejected_text = text
        return self.problem

    def check_text(self, text: str) -> str | None:
        """Judge a finished text in one go (a logged answer, a reference), as serving would have
        streamed it: the partial checks at every word boundary, then the final ones."""
        for match in re.finditer(r"\S+\s*", text):
            if self.check_partial(text[: match.end()]):
                return self.problem
        return self.check_final(text)

    def opening_settled(self, text: str) -> bool:
        """Whether the answer so far can no longer turn out to be an echo, whatever is generated next.

        A stream held back for the echo check (so an echo can still fall back to the cloud) may be
        released from here on: the echo verdict is the same as waiting for the whole opening, only
        earlier. An answer that starts "I'm sorry to hear that" settles within a few words, one that
        starts with the question's own words stays held until the check has judged it.
        """
        if not self._echo_pending:
            return True
        words = _complete_words(text)
        if not words:
            return False
        return not any(_echo_still_possible(words, self._echo_sources[i][0]) for i in self._echo_pending)

    def unjudged_tail(self, text: str) -> int:
        """Characters at the end of ``text`` that the number check has not judged yet: a number still being
        written ("$3" may become "$300"), with its currency sign. A stream never sends them before the
        next piece settles them, so a miscopied number the caller gave is never shown."""
        if not self._given_numbers:
            return 0
        # Walks back over the tail only: called for every piece of every stream.
        before = text.rstrip(_DIGITS)
        tail = len(text) - len(before)
        return tail + 1 if before.endswith(tuple(_CURRENCY)) else tail

    @property
    def has_given_numbers(self) -> bool:
        """Whether the question or an earlier turn holds a number the answer must not alter."""
        return bool(self._given_numbers)

    def numbers_settled(self, text: str) -> bool:
        """Whether an early release may go ahead as far as the caller's numbers are concerned.

        An answer restates the caller's order number or amount in its first sentence ("I understand
        that you are expecting a restitution of $3."), and that is where the packaged model, tuned,
        miscopies one ("$3" -> "$300", "3707955617" -> "370795561700": 9 cut streams in one
        ``make demo``). When the caller gave numbers, a held stream therefore waits for the end of
        the first sentence, so such an answer still falls back to the cloud unseen; other questions
        are not held longer.
        """
        return not self._given_numbers or _SENTENCE_END.search(text) is not None

    def opening_differs(self, text: str) -> bool:
        """Whether the answer's first words already differ from the opening of everything it could echo.

        A small model's echo starts where its source starts: of the packaged base model's echoed
        answers, all but one of 267 to Bitext questions, 124 of 125 to Banking77 and 113 of 115 to
        HWU64 open with two words of the question's first three, in order, each copied with at most
        one character changed ("audiobook" -> "audiobooks"; ``make eval-guard``). So an answer opening "I understand" to
        "where is my order?" is released at its first word, rather than after the four or five
        that :meth:`opening_settled` needs to rule an echo out whatever follows, and one opening
        "Certainly" at its first piece, before the word is even complete, since no completion of
        "cert" can be "where" or "is" with one character changed; the rare echo
        that starts otherwise is still caught, but cuts the stream instead of falling back. Earlier
        turns count as sources too.
        """
        if not self._echo_pending:
            return True
        words = _complete_words(text)
        partial = _words(text)[len(words) :]  # the word still being written, if any
        if not words and not partial:
            return False
        for index in self._echo_pending:
            source = self._echo_sources[index][0]
            for start in range(min(_ECHO_OPENING_STARTS, len(source))):
                expected = source[start : start + _ECHO_OPENING_WORDS]
                if all(_nearly_same(word, other) for word, other in zip(words, expected)) and (
                    len(words) >= len(expected) or not partial or _could_become(partial[0], expected[len(words)])
                ):
                    return False  # the opening so far could be this source's: wait for the next word or the full check
        return True

    # -- the individual checks --------------------------------------------------------------------

    def _echo(self, text: str, *, final: bool) -> str | None:
        """The answer opens with the question or an earlier turn (small edits allowed), or is nothing
        but the start of one (an echo cut short by the token limit)."""
        if not self._echo_pending:
            return None
        words = _words(text)
        for index in sorted(self._echo_pending):
            source, clause_marks, problem = self._echo_sources[index]
            size = len(source)
            if not final and len(words) < size + _ECHO_SLACK:
                continue  # wait until the opening is as long as the source (with slack for edits)
            self._echo_pending.discard(index)
            lengths = range(max(1, size - _ECHO_SLACK), size + _ECHO_SLACK + 1)
            ratio = max(SequenceMatcher(a=words[:n], b=source, autojunk=False).ratio() for n in lengths)
            if final and _MIN_ECHO_WORDS <= len(words) < size - _ECHO_SLACK and 2 * len(words) >= size:
                # The whole answer is the first half (or more) of the source: an echo the token cap cut short.
                ratio = max(ratio, SequenceMatcher(a=words, b=source[: len(words)], autojunk=False).ratio())
            if ratio < _ECHO_SIMILARITY:
                continue
            # "To check the early exit fee, please ..." restates the question as a clause and goes on: the
            # comma (or colon) it adds is what a bare echo ("check the early exit fee mendatanguser") lacks.
            opening = _opening(text, size + _ECHO_SLACK)
            if sum(opening.count(c) for c in ",:") > clause_marks:
                continue
            return problem
        return None

    def _adjacent_repeat(self, text: str) -> str | None:
        """A span said again right after itself, at the end of the text (whitespace folded)."""
        tail = _SPACE.sub(" ", text[-(3 * _MAX_UNIT + 8) :])
        n = len(tail)
        for unit in range(1, min(_MAX_UNIT, n // 2) + 1):
            if unit >= _MIN_ADJACENT:
                if tail[n - 2 * unit : n - unit] == tail[n - unit :] and tail[n - unit :].strip():
                    return "repetition loop"
            else:
                piece = tail[n - unit :]
                if piece.replace(" ", "").isdigit() and unit < _MIN_DIGIT_UNIT:
                    continue  # digit groups repeat in real numbers: 4111 1111 1111 1111, 10000
                reps = max(3, -(-min(self._min_span, _MIN_REPEATED_SPAN) // unit))
                span = unit * reps
                if span <= n and tail[n - span :] == piece * reps and piece.strip():
                    return "repetition loop"
        return None

    def _altered_number(self, text: str, *, final: bool) -> str | None:
        """A number the caller gave comes back altered; a number still being written is not judged yet."""
        if not self._given_numbers:
            return None
        for symbol, digits, end in _numbers(text):
            if digits in self._given_digits or (not final and end == len(text)):
                continue
            if any(_miscopied(digits, symbol, given, given_symbol) for given_symbol, given in self._given_numbers):
                return "altered a number from the question"
        return None

    def _separator_run(self, text: str) -> str | None:
        recent = "".join(text.split())[-_SEPARATOR_WINDOW:]
        if len(recent) < _SEPARATOR_WINDOW:
            return None
        punctuation = sum(not c.isalnum() for c in recent)
        return "separator run" if punctuation >= _SEPARATOR_SHARE * len(recent) else None

    def _foreign_script(self, text: str) -> str | None:
        for name, pattern in _SCRIPTS.items():
            if name not in self._allowed_scripts and len(pattern.findall(text[-400:])) >= _FOREIGN_CHARS:
                return f"drifted into {name} script"
        return None

    def _covered_by_repeats(self, text: str) -> str | None:
        """A few phrases, repeated with small changes, make up most of the answer (paraphrased loops)."""
        words = _words(text)
        if len(words) < _COVERAGE_MIN_WORDS:
            return None
        grams = [tuple(words[i : i + _COVERAGE_NGRAM]) for i in range(len(words) - _COVERAGE_NGRAM + 1)]
        counts = Counter(grams)
        covered = [False] * len(words)
        for i, gram in enumerate(grams):
            if counts[gram] >= _COVERAGE_REPEATS:
                for j in range(i, i + _COVERAGE_NGRAM):
                    covered[j] = True
        return "repetitive answer" if sum(covered) >= _COVERAGE_SHARE * len(words) else None
