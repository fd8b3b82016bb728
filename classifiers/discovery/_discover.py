"""From logged queries to a reviewed-category proposal.

One run: match every query to the categories already accepted (so they stay put and keep their
names), cluster the rest (:mod:`._clustering`), describe each cluster (share, cohesion, how alike
the cloud's answers are, PII share, keywords, examples), then propose the smallest set of clean
clusters covering ``target_share`` of the traffic. A cluster that reappears (its centroid close
to an earlier one's) keeps the earlier id, name and status: a rejected cluster stays rejected, and
only what is new is proposed. Drift shows up as new clusters.
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
from pydantic import BaseModel, ConfigDict, Field

from hybrid_common.pii import PiiMatcher

from ._clustering import cluster_embeddings, normalise
from ._corpus import LoggedQueries
from ._keywords import class_keywords, name_from_keywords
from .proposal import CategoryProposal, Proposal

__all__ = ["DiscoveryConfig", "DiscoveryResult", "propose"]


class DiscoveryConfig(BaseModel):
    """Settings of ``router discover`` (the ``[discover]`` table)."""

    model_config = ConfigDict(extra="forbid")

    target_share: float = Field(0.8, gt=0, le=1, description="Share of traffic the proposed categories should cover.")
    min_cluster_share: float = Field(
        0.005, gt=0, lt=1, description="Smallest cluster worth a category, as a share of the queries read."
    )
    categories: int | None = Field(
        None, ge=2, le=1000, description="Look for exactly this many clusters (default: estimated from the data, then scaled by granularity)."
    )
    granularity: float = Field(
        1.0, gt=0, le=10,
        description="Multiplies the estimated number of clusters: above 1 finer categories (each purer, a smaller share), below 1 coarser.",
    )  # fmt: skip
    lexical_weight: float = Field(
        0.3, ge=0, le=2, description="Weight of the queries' word TF-IDF (LSA) joined to their embeddings for clustering (0: embeddings only)."
    )
    min_cohesion: float = Field(0.55, ge=0, le=1, description="A clean cluster's queries are at least this close to their centroid.")
    min_answer_similarity: float = Field(
        0.55, ge=0, le=1, description="A clean cluster's cloud answers are at least this alike (when answers were logged)."
    )
    private_share: float = Field(0.5, ge=0, le=1, description="--auto marks a category private at this PII/private share.")
    answers_per_cluster: int = Field(12, ge=2, description="Cloud answers sampled per cluster to compare.")
    examples: int = Field(5, ge=1, le=50, description="Representative examples shown per cluster.")
    boundary_examples: int = Field(3, ge=0, le=50, description="Boundary examples shown per cluster.")
    same_cluster_cosine: float = Field(
        0.92, gt=0, le=1, description="A new cluster this close to an earlier one is the same cluster (keeps id, name, status)."
    )
    assign_quantile: float = Field(
        0.05, ge=0, le=1,
        description="A query HDBSCAN left as noise joins its nearest cluster when at least as close as this quantile of the cluster's own members.",
    )  # fmt: skip
    max_points: int = Field(4000, ge=100, description="Above this many queries, cluster micro-cluster centroids instead.")
    max_queries: int | None = Field(None, ge=1, description="Read at most this many logged queries (default: all).")
    seed: int = 0


@dataclass
class DiscoveryResult:
    proposal: Proposal
    vectors: dict[str, Any]
    noise_share: float
    clusters_found: int
    granularity: str = ""
    """How the number of clusters was decided, for people (e.g. "estimated 58 (votes 76, 50, 62, 53)")."""


def _cluster_id(request_ids: Sequence[str]) -> str:
    digest = hashlib.sha256("\n".join(sorted(request_ids)[:64]).encode()).hexdigest()
    return f"c{digest[:10]}"


def _answer_similarity(answers: list[str], encode: Callable[[list[str]], np.ndarray]) -> float | None:
    if len(answers) < 2:
        return None
    return _mean_pairwise(normalise(encode(answers)))


def propose(
    queries: LoggedQueries,
    *,
    encode: Callable[[list[str]], np.ndarray],
    answers_for: Callable[[list[str]], dict[str, str]],
    config: DiscoveryConfig,
    pii: PiiMatcher,
    previous: Proposal | None = None,
    previous_vectors: dict[str, Any] | None = None,
    log_path: str = "",
    encoder_sha256: str = "",
    namer: Callable[[list[str]], str | None] | None = None,
) -> DiscoveryResult:
    """The new proposal for ``queries``; ``previous`` (and its vectors) keeps earlier decisions.

    ``namer`` (optional, e.g. a cloud model) names a new cluster from a few of its queries; it is
    only ever shown queries that were neither private nor PII matches, and a cluster with fewer
    than three such queries keeps its keyword name.
    """
    n = len(queries.texts)
    points = normalise(queries.embeddings)
    members = -np.ones(n, dtype=np.int64)  # index into `categories` below
    categories: list[CategoryProposal] = []
    centroids: list[np.ndarray] = []
    thresholds: list[float] = []
    kept_previous: dict[str, int] = {}

    # 1. Accepted categories first: they keep their queries, names and ids.
    if previous is not None and previous_vectors is not None:
        index = {cid: i for i, cid in enumerate(previous_vectors["ids"])}
        accepted = [c for c in previous.categories if c.status == "accepted"]
        if accepted and n:
            cents = np.stack([previous_vectors["centroids"][index[c.id]] for c in accepted])
            floors = np.array([previous_vectors["thresholds"][index[c.id]] for c in accepted])
            sims = points @ cents.T
            best = sims.argmax(axis=1)
            hit = sims[np.arange(n), best] >= floors[best]
            for j, category in enumerate(accepted):
                kept_previous[category.id] = len(categories)
                members[hit & (best == j)] = len(categories)
                categories.append(category.model_copy())
                centroids.append(cents[j])
                thresholds.append(float(floors[j]))

    # 2. Cluster what is left.
    rest = np.flatnonzero(members < 0)
    noise_share, found, granularity = 0.0, 0, ""
    if len(rest) >= 16:
        result = cluster_embeddings(
            points[rest], texts=[queries.texts[i] for i in rest], categories=config.categories,
            granularity=config.granularity, lexical_weight=config.lexical_weight,
            min_cluster_share=config.min_cluster_share * n / len(rest), max_points=config.max_points,
            assign_quantile=config.assign_quantile, seed=config.seed,
        )  # fmt: skip
        noise_share, found = result.noise_share, result.k
        if result.estimate is None:
            granularity = f"{config.categories} asked for"
        else:
            votes = ", ".join(map(str, result.estimate.votes))
            granularity = f"estimated {result.estimate.categories} (votes {votes}) x granularity {config.granularity:g}"
        earlier = [c for c in (previous.categories if previous else []) if c.id not in kept_previous]
        earlier_cents = (
            np.stack([previous_vectors["centroids"][previous_vectors["ids"].index(c.id)] for c in earlier])
            if earlier and previous_vectors is not None
            else None
        )
        claimed: set[str] = set()
        groups = [rest[result.labels == cluster] for cluster in range(result.k)]
        min_size = max(8, int(config.min_cluster_share * n))
        refined: list[np.ndarray] = []
        for rows in groups:
            refined += _split_by_answers(rows, points, queries.request_ids, answers_for, encode, config, min_size)
        for rows in refined:
            if len(rows) == 0:
                continue
            centroid = normalise(points[rows].mean(axis=0, keepdims=True))[0]
            category = None
            if earlier_cents is not None:
                sims = earlier_cents @ centroid
                j = int(sims.argmax())
                if sims[j] >= config.same_cluster_cosine and earlier[j].id not in claimed:
                    category = earlier[j].model_copy()
                    claimed.add(category.id)
            if category is None:
                category = CategoryProposal(
                    id=_cluster_id([queries.request_ids[i] for i in rows]), name="UNNAMED", size=0, share=0.0, cohesion=0.0
                )
            members[rows] = len(categories)
            categories.append(category)
            centroids.append(centroid)
            cos = points[rows] @ centroid
            thresholds.append(float(np.quantile(cos, 0.05)))

    # 3. Describe every category from its current members.
    keywords = class_keywords(queries.texts, members.tolist())
    taken = {c.name for c in categories if c.name != "UNNAMED"}
    for i, category in enumerate(categories):
        rows = np.flatnonzero(members == i)
        if len(rows):
            centroid = normalise(points[rows].mean(axis=0, keepdims=True))[0]
            centroids[i] = centroid
        cos = points[rows] @ centroids[i] if len(rows) else np.zeros(0)
        order = rows[np.argsort(-cos)] if len(rows) else rows
        category.size = int(len(rows))
        category.new_queries = int(len(rows))
        category.share = float(len(rows) / n) if n else 0.0
        category.cohesion = float(cos.mean()) if len(rows) else 0.0
        category.pii_share = float(np.mean([queries.private[r] for r in rows])) if len(rows) else 0.0
        category.keywords = keywords.get(i, category.keywords)
        category.examples = _distinct([pii.redact(queries.texts[r]) for r in order], config.examples)
        category.boundary = _distinct([pii.redact(queries.texts[r]) for r in order[::-1]], config.boundary_examples)
        sample = [queries.request_ids[r] for r in order[:: max(1, len(order) // config.answers_per_cluster)][: config.answers_per_cluster]]
        answers = answers_for(sample)
        category.answer_similarity = _answer_similarity(list(answers.values()), encode) if answers else None
        if category.name == "UNNAMED":
            category.name = _named(namer, [queries.texts[r] for r in order if not queries.private[r]], pii, taken)
            category.name = category.name or name_from_keywords(category.keywords, taken)
            taken.add(category.name)
        category.clean = category.cohesion >= config.min_cohesion and (
            category.answer_similarity is None or category.answer_similarity >= config.min_answer_similarity
        )

    # 4. The smallest clean set covering the target share (accepted ones count first).
    categories_sorted = sorted(categories, key=lambda c: (c.status != "accepted", -c.share))
    covered = 0.0
    for category in categories_sorted:
        category.proposed = False
        if category.status == "rejected" or not category.clean:
            continue
        if category.status == "accepted" or covered < config.target_share:
            category.proposed = True
            covered += category.share
    order = [categories.index(c) for c in categories_sorted]
    remap = -np.ones(len(categories) + 1, dtype=np.int64)
    remap[order] = np.arange(len(order))
    proposal = Proposal(
        log=log_path, encoder_sha256=encoder_sha256, queries=n, unassigned_share=float((members < 0).mean()) if n else 0.0,
        target_share=config.target_share, proposed_share=covered, categories=categories_sorted,
    )  # fmt: skip
    vectors = {
        "ids": [c.id for c in categories_sorted],
        "centroids": np.stack([centroids[i] for i in order]) if order else np.zeros((0, points.shape[1] if n else 0)),
        "thresholds": np.array([thresholds[i] for i in order], dtype=np.float32),
        "request_ids": list(queries.request_ids),
        "members": np.where(members >= 0, remap[members], -1),
    }
    return DiscoveryResult(
        proposal=proposal, vectors=vectors, noise_share=noise_share, clusters_found=found, granularity=granularity
    )


def _named(
    namer: Callable[[list[str]], str | None] | None, shareable: list[str], pii: PiiMatcher, taken: set[str]
) -> str | None:
    """A name from ``namer`` for up to five non-private, PII-free queries, made a valid unique name."""
    if namer is None:
        return None
    sample = [t for t in shareable if pii.find(t) is None][:5]
    if len(sample) < 3:
        return None
    try:
        raw = namer(sample)
    except Exception:  # noqa: BLE001 - naming is a nicety: keywords name the cluster instead
        return None
    words = re.findall(r"[A-Za-z0-9]+", raw or "")[:4]
    if not words or not words[0][0].isalpha():
        return None
    base, name, n = "_".join(words).upper(), "_".join(words).upper(), 2
    while name in taken:
        name, n = f"{base}_{n}", n + 1
    return name


def _split_by_answers(
    rows: np.ndarray,
    points: np.ndarray,
    request_ids: Sequence[str],
    answers_for: Callable[[list[str]], dict[str, str]],
    encode: Callable[[list[str]], np.ndarray],
    config: DiscoveryConfig,
    min_size: int,
) -> list[np.ndarray]:
    """A cluster whose cloud answers differ, split by query and answer together where that helps.

    Sibling intents ("check the refund policy" / "track my refund") sit close in query space, but
    the cloud answers them differently; one local category per answer family is what the local
    model can learn. Tries 2..4 parts (k-means on the joined query and answer embeddings of up to
    ``4 * answers_per_cluster`` members) and keeps the fewest whose parts all have answers alike;
    the other members follow their nearest part in query space.
    """
    from sklearn.cluster import KMeans

    if len(rows) < 2 * min_size:
        return [rows]
    rng = np.random.default_rng(len(rows))
    sample = np.sort(rng.choice(rows, size=min(len(rows), 4 * config.answers_per_cluster), replace=False))
    answers = answers_for([request_ids[i] for i in sample])
    with_answer = np.array([i for i in sample if request_ids[i] in answers])
    if len(with_answer) < 8:
        return [rows]
    answer_vecs = normalise(encode([answers[request_ids[i]] for i in with_answer]))
    if _mean_pairwise(answer_vecs) >= config.min_answer_similarity:
        return [rows]
    joined = np.hstack([points[with_answer], answer_vecs])
    for k in (2, 3, 4):
        parts = KMeans(k, n_init=4, random_state=config.seed).fit_predict(joined)
        if min(np.bincount(parts, minlength=k)) * len(rows) / len(with_answer) < min_size:
            break
        if all(_mean_pairwise(answer_vecs[parts == p]) >= config.min_answer_similarity for p in range(k)):
            cents = normalise(np.stack([points[with_answer[parts == p]].mean(axis=0) for p in range(k)]))
            nearest = (points[rows] @ cents.T).argmax(axis=1)
            return [rows[nearest == p] for p in range(k)]
    return [rows]


def _mean_pairwise(vectors: np.ndarray) -> float:
    n = len(vectors)
    if n < 2:
        return 1.0
    sims = vectors @ vectors.T
    return float((sims.sum() - np.trace(sims)) / (n * (n - 1)))


def _distinct(texts: list[str], limit: int) -> list[str]:
    out: list[str] = []
    seen: set[str] = set()
    for text in texts:
        key = text.lower().strip()
        if key not in seen:
            seen.add(key)
            out.append(text)
        if len(out) >= limit:
            break
    return out
