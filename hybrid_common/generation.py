"""The one guarded-generation loop, used by serving and by evaluation alike.

"Evaluated as served" holds only if both run the same loop: the guard sees ``text + piece``
before a piece is released, so a degenerate piece never reaches a caller, and the finished
answer then gets the checks that can only be made at the end.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator

from hybrid_common.guard import DegenerationGuard

__all__ = ["guarded_pieces"]


def guarded_pieces(
    pieces: Iterable[str],
    guard: DegenerationGuard,
    *,
    hold_back: int = 0,
    release_when_settled: bool = False,
    release_when_opening_differs: bool = False,
) -> Iterator[str]:
    """Yield ``pieces`` while the answer stays sound; afterwards ``guard.problem`` says why it stopped, if it did.

    Stops (without consuming further) before the first piece that makes the answer degenerate.
    With ``hold_back`` nothing is released until the answer is that many characters long (or
    complete), so a stream whose start degenerates (an echoed question) has sent nothing and can
    still be answered by another tier; the held text is then released as one piece. With
    ``release_when_settled`` the hold ends as soon as the guard rules an echo out
    (:meth:`DegenerationGuard.opening_settled`), usually a few words in: the echo verdict is the
    same, the caller's first token comes sooner, and a loop that starts after that point cuts the
    stream instead of falling back (as one after ``hold_back`` always did). With
    ``release_when_opening_differs`` it ends sooner still, at the first word that is not the opening
    of the question or an earlier turn (:meth:`DegenerationGuard.opening_differs`): an echo starting
    some other way then cuts the stream too. When the caller gave numbers, any release waits for
    the answer's first sentence to end (:meth:`DegenerationGuard.numbers_settled`), where a
    miscopied order number or amount appears, for at most twice ``hold_back``. Whatever the hold, a number still being written is
    not sent until the next piece lets the guard judge it (:meth:`DegenerationGuard.unjudged_tail`).
    """
    text = ""
    sent = 0  # characters of ``text`` already yielded
    released = hold_back <= 0
    for piece in pieces:
        if guard.check_partial(text + piece):
            return
        text += piece
        if not released:
            early = (release_when_opening_differs and guard.opening_differs(text)) or (release_when_settled and guard.opening_settled(text))
            # The caller's numbers extend any hold to the first sentence's end, up to twice its length.
            released = (early or len(text) >= hold_back) and (guard.numbers_settled(text) or len(text) >= 2 * hold_back)
        if released:
            ready = len(text) - guard.unjudged_tail(text)
            if ready > sent:
                yield text[sent:ready]
                sent = ready
    if guard.check_final(text) is None and len(text) > sent:
        yield text[sent:]
