"""Name clusters by their keywords: class-based TF-IDF (BERTopic's c-TF-IDF).

All of a cluster's queries are one document; a term scores high when it is frequent in that
cluster and rare across clusters, so "refund" names the refund cluster even though "order" is
more frequent there. A name built from the top keywords is a suggestion the reviewer renames.
"""

from __future__ import annotations

import re
from collections import Counter
from collections.abc import Sequence

import numpy as np

__all__ = ["class_keywords", "name_from_keywords", "proper_nouns"]


def class_keywords(texts: Sequence[str], labels: Sequence[int], *, top: int = 5) -> dict[int, list[str]]:
    """The ``top`` keywords of each cluster id in ``labels`` (``-1`` rows are context only)."""
    from sklearn.feature_extraction.text import ENGLISH_STOP_WORDS, CountVectorizer

    labels_arr = np.asarray(labels)
    ids = sorted(int(c) for c in set(labels_arr.tolist()) if c >= 0)
    if not ids:
        return {}
    docs = [" ".join(t for t, lab in zip(texts, labels_arr, strict=True) if lab == c) for c in ids]
    vectorizer = CountVectorizer(
        ngram_range=(1, 2), stop_words=sorted(ENGLISH_STOP_WORDS | _CHAT_WORDS | proper_nouns(texts)),
        token_pattern=r"(?u)\b[a-z][a-z]+\b",
        min_df=1, lowercase=True,
    )  # fmt: skip
    try:
        counts = vectorizer.fit_transform(docs).toarray().astype(np.float64)
    except ValueError:  # only stop words
        return {c: [] for c in ids}
    terms = vectorizer.get_feature_names_out()
    tf = counts / np.maximum(counts.sum(axis=1, keepdims=True), 1.0)
    average_words = counts.sum() / len(ids)
    idf = np.log1p(average_words / np.maximum(counts.sum(axis=0), 1.0))
    scores = tf * idf
    out: dict[int, list[str]] = {}
    for row, cluster in enumerate(ids):
        order = np.argsort(-scores[row])
        chosen: list[str] = []
        for index in order:
            if scores[row, index] <= 0 or len(chosen) >= top:
                break
            term = str(terms[index])
            # A bigram adds nothing once both its words are in; a word adds nothing inside a chosen bigram.
            if any(term in c.split() or set(term.split()) <= set(c.split()) for c in chosen):
                continue
            chosen.append(term)
        out[cluster] = chosen
    return out


def proper_nouns(texts: Sequence[str], *, share: float = 0.5) -> set[str]:
    """Words written capitalised mid-sentence in at least ``share`` of their uses: names of people and
    places ("Ms Hawkings", "to Toronto"). Kept out of keywords, so a category is not named after a
    customer and a proposal does not repeat names the PII patterns do not catch."""
    capitalised: Counter[str] = Counter()
    seen: Counter[str] = Counter()
    for text in texts:
        for i, word in enumerate(re.findall(r"[A-Za-z][A-Za-z']+", text)):
            if i == 0:
                continue  # a sentence's first word is capitalised anyway
            lower = word.lower()
            seen[lower] += 1
            if word[0].isupper() and not word.isupper():
                capitalised[lower] += 1
    return {w for w, n in capitalised.items() if n >= share * seen[w]}


def name_from_keywords(keywords: Sequence[str], taken: set[str], *, words: int = 2) -> str:
    """``["refund", "money back"]`` -> ``REFUND_MONEY``; unique against ``taken``."""
    parts: list[str] = []
    for keyword in keywords:
        for word in keyword.split():
            if word not in parts:
                parts.append(word)
        if len(parts) >= words:
            break
    base = re.sub(r"[^A-Z0-9_]", "", "_".join(parts[:words]).upper()) or "CATEGORY"
    name, n = base, 2
    while name in taken:
        name, n = f"{base}_{n}", n + 1
    return name


# Words every support query has: they would name every cluster alike.
_CHAT_WORDS = frozenset(
    "help want need like know tell pls please hi hello hey could would can ll ve im id dont cant wanna gotta "
    "trying try possible assistance assist way ask asking information info mr mrs ms dr miss sir madam".split()
)
