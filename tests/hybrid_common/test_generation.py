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


EARLY = {"release_when_settled": True, "release_when_opening_differs": True}


def test_a_miscopied_number_in_the_first_sentence_is_caught_before_anything_is_sent() -> None:
    """The tuned model's "$3" -> "$300" (as served in make demo): with the caller's numbers the early
    release waits for the first sentence, so the answer falls back unseen instead of being cut."""
    question = "I expect a restitution of $3, was it processed"
    pieces = ["I", " understand", " that", " you", " are", " expecting", " a", " restitution", " of", " $", "3", "0", "0", ".", " Let"]
    guard = DegenerationGuard(question=question)
    assert list(guarded_pieces(pieces, guard, hold_back=len(question) + 48, **EARLY)) == []
    assert guard.problem == "altered a number from the question"


def test_the_first_sentence_is_released_once_its_numbers_are_right() -> None:
    question = "I expect a restitution of $3, was it processed"
    pieces = ["I", " understand", " you", " expect", " $", "3", ".", " It", " was", " processed", "."]
    counted = Counted(pieces)
    out = list(guarded_pieces(counted, DegenerationGuard(question=question), hold_back=len(question) + 48, **EARLY))
    assert "".join(out) == "".join(pieces)
    assert out[0] == "I understand you expect $3. It"  # held until the sentence has ended (". " settles it), sent as one piece
    # Without numbers in the question the same opening goes out once its first words differ from the question.
    plain = list(guarded_pieces(["I", " understand", " you", "."], DegenerationGuard(question="was my refund processed"), hold_back=90, **EARLY))
    assert plain[0] == "I understand"


def test_a_number_still_being_written_is_never_sent_before_it_is_judged() -> None:
    """Even an unheld stream (or one past its hold) keeps "$3" back until the next piece shows whether it becomes "$300"."""
    question = "refunding $12"
    pieces = ["You", " asked", " for", " $", "1", "2", "0", "0", " back"]
    guard = DegenerationGuard(question=question)
    out = list(guarded_pieces(pieces, guard))  # hold_back=0: released from the first piece
    assert "".join(out) == "You asked for " and guard.problem == "altered a number from the question"
    right = ["You", " asked", " for", " $", "1", "2", " back", "."]
    assert "".join(guarded_pieces(right, DegenerationGuard(question=question))) == "You asked for $12 back."
    # The number at the very end of the answer is judged by the final check, then sent.
    assert "".join(guarded_pieces(["Refund", " of", " $", "1", "2"], DegenerationGuard(question=question))) == "Refund of $12"
    assert "".join(guarded_pieces(["Refund", " of", " $", "1", "2", "0"], DegenerationGuard(question=question))) == "Refund of "


def test_without_numbers_from_the_caller_nothing_is_held_for_numbers() -> None:
    guard = DegenerationGuard(question="where is my order")
    assert guard.unjudged_tail("It costs $30") == 0 and guard.numbers_settled("It")
    numbered = DegenerationGuard(question="order 3707955617")
    assert numbered.unjudged_tail("order 37079") == 5 and numbered.unjudged_tail("costs $") == 1
    assert numbered.unjudged_tail("order 3707955617 ") == 0
    assert not numbered.numbers_settled("Your order 3707955617") and numbered.numbers_settled("Your order 3707955617 is on its way. ")


def test_the_callers_numbers_hold_past_the_usual_length_up_to_twice_it() -> None:
    """"reinburse $3" -> "I understand that you would like to request a reimbursement of $300." (make demo):
    the opening is longer than the usual hold (48 characters beyond the question), so that hold alone
    would have released it before the number came."""
    question = "reinburse $3"
    words = "I understand that you would like to request a reimbursement of".split()
    pieces = [words[0]] + [" " + w for w in words[1:]] + [" $", "3", "0", "0", ".", " Please"]
    guard = DegenerationGuard(question=question)
    assert list(guarded_pieces(pieces, guard, hold_back=len(question) + 48, **EARLY)) == []
    assert guard.problem == "altered a number from the question"
    # Not forever: with no sentence end, the text goes out at twice the hold.
    long = [f"{word} " for word in ("we will look into the matter you raised and then write back to you with what we find out about it soon "
                                    "enough today or tomorrow morning at the latest if the team has everything it needs from our side").split()]
    out = list(guarded_pieces(Counted(long), DegenerationGuard(question=question), hold_back=len(question) + 48, **EARLY))
    assert "".join(out) == "".join(long)
    assert 2 * (len(question) + 48) <= len(out[0]) < 2 * (len(question) + 48) + 10  # released at the first piece past twice the hold
