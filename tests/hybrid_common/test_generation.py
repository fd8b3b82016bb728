"""The guarded-generation loop shared by serving and evaluation."""

from __future__ import annotations

from collections.abc import Iterator

from hybrid_common.generation import guarded_pieces
from hybrid_common.guard import DegenerationGuard


class Counted:
    """An iterator of pieces that records how many were taken."""

    def __init__(self, pieces: list[str]) -> None:
        self.pieces = pieces
        self.taken = 0

    def __iter__(self) -> Iterator[str]:
        for piece in self.pieces:
            self.taken += 1
            yield piece


def test_clean_answer_passes_whole() -> None:
    guard = DegenerationGuard(question="Where is my order?")
    pieces = ["It ", "ships ", "tomorrow."]
    assert list(guarded_pieces(pieces, guard)) == pieces and guard.problem is None


def test_stops_before_the_piece_that_starts_a_loop_and_reads_no_further() -> None:
    guard = DegenerationGuard(min_span=12)
    source = Counted(["Hello. ", "la", "la", "la", "la", "la", "la", "la", "never read"])
    released = list(guarded_pieces(source, guard))
    assert guard.problem == "repetition loop"
    # min_span 12 of a 2-character unit is six repeats: the sixth "la" completes the loop and is held back.
    assert "".join(released) == "Hello. " + "la" * 5
    assert source.taken == len(released) + 1


def test_final_checks_run_at_the_end() -> None:
    guard = DegenerationGuard(question="Where is my order?")
    assert list(guarded_pieces(["where is ", "my order"], guard)) == ["where is ", "my order"]
    assert guard.problem == "echoed the question"
    empty = DegenerationGuard()
    assert list(guarded_pieces([], empty)) == [] and empty.problem == "empty answer"


def test_hold_back_releases_nothing_before_an_echo_is_judged() -> None:
    question = "where is my order"
    echo = ["where ", "is ", "my ", "order ", "mendatanguser ", "where ", "is"]
    guard = DegenerationGuard(question=question)
    assert list(guarded_pieces(echo, guard, hold_back=len(question) + 20)) == []
    assert guard.problem == "echoed the question"
    # Without hold-back the same stream would already have sent the echo.
    early = DegenerationGuard(question=question)
    assert "".join(guarded_pieces(echo, early)).startswith("where is my order")


def test_hold_back_then_streams_piece_by_piece_and_flushes_a_short_answer() -> None:
    pieces = ["Your ", "order ", "left ", "today. ", "Track ", "it ", "online."]
    guard = DegenerationGuard(question="where is my order")
    out = list(guarded_pieces(pieces, guard, hold_back=12))
    assert out[0] == "Your order left " and out[1:] == ["today. ", "Track ", "it ", "online."]
    short = list(guarded_pieces(["Shipped."], DegenerationGuard(question="status?"), hold_back=100))
    assert short == ["Shipped."]


def test_a_settled_opening_is_released_before_the_hold_back() -> None:
    question = "how do I change the shipping address of my order?"
    pieces = ["I'm ", "sorry ", "to ", "hear ", "that. ", "Go ", "to ", "Orders ", "and ", "choose ", "Edit."]
    guard = DegenerationGuard(question=question)
    out = list(guarded_pieces(pieces, guard, hold_back=len(question) + 48, release_when_settled=True))
    assert "".join(out) == "".join(pieces) and guard.problem is None
    # The first chunk is the opening up to where an echo became impossible, then piece by piece.
    assert out[0] == "I'm sorry to hear " and out[1:] == pieces[4:]
    # Without it, this answer (shorter than the hold-back) arrives whole at the end.
    held = list(guarded_pieces(pieces, DegenerationGuard(question=question), hold_back=len(question) + 48))
    assert held == ["".join(pieces)]


def test_an_echo_is_still_held_whole_with_early_release() -> None:
    question = "where is my order"
    echo = ["where ", "is ", "my ", "order ", "mendatanguser ", "where ", "is"]
    guard = DegenerationGuard(question=question)
    assert list(guarded_pieces(echo, guard, hold_back=len(question) + 48, release_when_settled=True)) == []
    assert guard.problem == "echoed the question"


def test_an_opening_that_differs_is_released_at_its_first_word() -> None:
    question = "how do I change the shipping address of my order?"
    pieces = ["I'm ", "sorry ", "to ", "hear ", "that. ", "Go ", "to ", "Orders."]
    options = {"hold_back": len(question) + 48, "release_when_settled": True}
    out = list(guarded_pieces(pieces, DegenerationGuard(question=question), **options, release_when_opening_differs=True))
    assert out[0] == "I'm " and out[1:] == pieces[1:]
    settled = list(guarded_pieces(pieces, DegenerationGuard(question=question), **options))
    assert settled[0] == "I'm sorry to hear " and "".join(settled) == "".join(out)


def test_an_echo_opening_with_the_questions_words_is_still_held_whole() -> None:
    question = "where is my order"
    echo = ["where ", "is ", "my ", "order ", "mendatanguser ", "where ", "is"]
    guard = DegenerationGuard(question=question)
    options = {"hold_back": len(question) + 48, "release_when_settled": True, "release_when_opening_differs": True}
    assert list(guarded_pieces(echo, guard, **options)) == []
    assert guard.problem == "echoed the question"


def test_an_echo_opening_otherwise_is_cut_after_its_release() -> None:
    """The trade the early release makes: the rare echo that does not start with its source's words is cut, not held."""
    question = "where is my order"
    echo = ["user\n", "where ", "is ", "my ", "order ", "mendatanguser ", "where"]
    guard = DegenerationGuard(question=question)
    options = {"hold_back": len(question) + 48, "release_when_settled": True, "release_when_opening_differs": True}
    out = list(guarded_pieces(echo, guard, **options))
    assert out and "".join(out).startswith("user\nwhere") and guard.problem == "echoed the question"
