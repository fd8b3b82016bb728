"""The guard eval replays answers through serving's own release loop."""

from __future__ import annotations

import re

from evals.guard_eval import release


class WordPieces:
    """Cuts text at word starts and between digits (as Gemma's vocabulary does): a stand-in vocabulary for replay."""

    def tokenize(self, data: bytes, add_bos: bool = False) -> list[bytes]:
        return [m.encode() for m in re.findall(r"\d|\s*[^\s\d]+|\s+", data.decode())]

    def detokenize(self, tokens: list[bytes]) -> bytes:
        return b"".join(tokens)


def test_a_miscopied_amount_falls_back_unseen_and_a_clean_answer_is_released_early() -> None:
    rows = [
        {"question": "I expect a restitution of $3, was it processed", "answer": "I understand that you are expecting a restitution of $300. We will check."},
        {"question": "where is my order", "answer": "Certainly! Your order is on its way."},
    ]
    figures = release(rows, WordPieces())
    assert figures["rejected"] == {"altered a number from the question": 1}
    assert figures["cut_after_release"] == {} and figures["shown_number_miscopied"] == 0
    assert figures["questions_with_numbers"] == 1
    assert figures["released_at_token"] == {"1": 1, "end": 1}  # "Certainly" at once; the miscopy never went out


def test_an_echo_opening_otherwise_is_counted_as_cut_after_release() -> None:
    rows = [{"question": "where is my order", "answer": "user\nwhere is my order mendatanguser where is my order"}]
    figures = release(rows, WordPieces())
    assert figures["cut_after_release"] == {"echoed the question": 1} and figures["echoes_released_before_caught"] == 1
