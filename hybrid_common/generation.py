"""The one guarded-generation loop, used by serving and by evaluation alike.

"Evaluated as served" holds only if both run the same loop: the guard sees ``text + piece``
before a piece is released, so a degenerate piece never reaches a caller, and the finished
answer then gets the checks that can only be made at the end.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator

from hybrid_common.guard import DegenerationGuard

__all__ = ["guarded_pieces"]


def guarded_pieces(pieces: Iterable[str], guard: DegenerationGuard) -> Iterator[str]:
    """Yield ``pieces`` while the answer stays sound; afterwards ``guard.problem`` says why it stopped, if it did.

    Stops (without consuming further) before the first piece that makes the answer degenerate.
    """
    text = ""
    for piece in pieces:
        if guard.check_partial(text + piece):
            return
        text += piece
        yield piece
    guard.check_final(text)
