"""Review and apply a category proposal: the step from discovered clusters to a served classifier.

Edits (:func:`rename`, :func:`merge`, :func:`split`, :func:`set_private`, and accept/reject
through :func:`classifiers.discovery.set_status`) go through :meth:`ProposalStore.edit`, which
validates the whole result before writing, so a bad edit changes nothing. A rename or merge keeps
the old names as ``aliases``: evidence recorded under them belongs to the new category.

:func:`apply_categories` turns the accepted categories into labels (queries of every other
cluster, and queries in no cluster, become out-of-scope examples, label ``None``), fits and
calibrates an :class:`~classifiers.EmbeddingClassifier`, and adds it to the classifier registry
as a new promoted version, which a router following that registry picks up without a restart.
No label is read from anywhere but the reviewed proposal.
"""

from __future__ import annotations

import hashlib
import logging
import random
import tempfile
from collections import defaultdict
from pathlib import Path
from typing import Any

import numpy as np

from classifiers.discovery import CategoryProposal, Proposal, ProposalError, ProposalStore, normalise

__all__ = ["AppliedCategories", "apply_categories", "labelled_queries", "merge", "rename", "set_private", "split"]

logger = logging.getLogger(__name__)


def rename(store: ProposalStore, old: str, new: str) -> Proposal:
    def change(proposal: Proposal, vectors: dict[str, Any]) -> None:
        category = proposal.find(old)
        if category.name != new:
            category.aliases = [a for a in [*category.aliases, category.name] if a != new]
            category.name = new

    return store.edit(change)


def set_private(store: ProposalStore, names: list[str], private: bool = True) -> Proposal:
    def change(proposal: Proposal, vectors: dict[str, Any]) -> None:
        for name in names:
            proposal.find(name).private = private

    return store.edit(change)


def merge(store: ProposalStore, names: list[str], *, into: str | None = None) -> Proposal:
    """Merge categories into the first named one (which keeps its id); ``into`` renames the result."""
    if len(names) < 2:
        raise ProposalError("merge needs at least two categories")

    def change(proposal: Proposal, vectors: dict[str, Any]) -> dict[str, Any]:
        parts = [proposal.find(n) for n in names]
        if len({p.id for p in parts}) < len(parts):
            raise ProposalError("merge names the same category twice")
        keep, others = parts[0], parts[1:]
        ids = vectors["ids"]
        rows = [ids.index(p.id) for p in parts]
        sizes = np.array([max(p.size, 1) for p in parts], dtype=np.float64)
        centroids = vectors["centroids"]
        centroids[rows[0]] = normalise((centroids[rows] * sizes[:, None]).sum(axis=0, keepdims=True))[0]
        vectors["thresholds"][rows[0]] = float(vectors["thresholds"][rows].min())
        keep.cohesion = float((np.array([p.cohesion for p in parts]) * sizes).sum() / sizes.sum())
        keep.size = int(sum(p.size for p in parts))
        keep.share = float(min(1.0, sum(p.share for p in parts)))
        keep.new_queries = int(sum(p.new_queries for p in parts))
        keep.pii_share = float((np.array([p.pii_share for p in parts]) * sizes).sum() / sizes.sum())
        keep.private = any(p.private for p in parts)
        keep.examples = (keep.examples + [e for p in others for e in p.examples])[: max(5, len(keep.examples))]
        keep.keywords = list(dict.fromkeys(keep.keywords + [k for p in others for k in p.keywords]))[:8]
        keep.clean = all(p.clean for p in parts)
        keep.proposed = any(p.proposed for p in parts)
        for other in others:
            keep.aliases += [other.name, *other.aliases]
            keep.merged_from.append(other.id)
        if any(p.status == "accepted" for p in parts):
            keep.status = "accepted"
        if into is not None and into != keep.name:
            keep.aliases.append(keep.name)
            keep.name = into
        return _drop(proposal, vectors, [ids.index(p.id) for p in others], absorb_into=rows[0])

    return store.edit(change)


def _drop(proposal: Proposal, vectors: dict[str, Any], rows: list[int], *, absorb_into: int) -> dict[str, Any]:
    """Remove categories ``rows`` from the proposal and vectors; their members join ``absorb_into``."""
    members = vectors["members"].copy()
    members[np.isin(members, rows)] = absorb_into
    keep = [i for i in range(len(vectors["ids"])) if i not in set(rows)]
    remap = -np.ones(len(vectors["ids"]), dtype=np.int64)
    remap[keep] = np.arange(len(keep))
    dropped = {vectors["ids"][i] for i in rows}
    proposal.categories = [c for c in proposal.categories if c.id not in dropped]
    return {
        "ids": [vectors["ids"][i] for i in keep],
        "centroids": vectors["centroids"][keep],
        "thresholds": vectors["thresholds"][keep],
        "request_ids": vectors["request_ids"],
        "members": np.where(members >= 0, remap[np.maximum(members, 0)], -1),
    }


def split(store: ProposalStore, name: str, *, log_path: str | Path, encoder: Any, seed: int = 0) -> Proposal:
    """Split one category in two (k-means on its queries' embeddings); the larger part keeps the id."""
    from sklearn.cluster import KMeans

    def change(proposal: Proposal, vectors: dict[str, Any]) -> dict[str, Any]:
        category = proposal.find(name)
        row = vectors["ids"].index(category.id)
        member_rows = np.flatnonzero(vectors["members"] == row)
        if len(member_rows) < 4:
            raise ProposalError(f"{category.name} has {len(member_rows)} queries: too few to split")
        texts = _texts_for(log_path, [vectors["request_ids"][i] for i in member_rows])
        kept = [i for i in member_rows if vectors["request_ids"][i] in texts]
        points = normalise(np.asarray(encoder.encode([texts[vectors["request_ids"][i]] for i in kept]), dtype=np.float32))
        parts = KMeans(2, n_init=4, random_state=seed).fit_predict(points)
        big = int(np.bincount(parts).argmax())
        new_rows = np.array(kept)[parts != big]
        digest = hashlib.sha256("\n".join(sorted(vectors["request_ids"][i] for i in new_rows)).encode()).hexdigest()
        total = category.size or len(kept)
        new = CategoryProposal(
            id=f"c{digest[:10]}", name=_free_name(proposal, f"{category.name}_2"), status=category.status,
            private=category.private, clean=category.clean, size=int(len(new_rows)),
            share=category.share * len(new_rows) / max(total, 1), cohesion=category.cohesion, keywords=category.keywords,
            pii_share=category.pii_share,
        )  # fmt: skip
        category.size = int(total - len(new_rows))
        category.share = category.share - new.share
        proposal.categories.append(new)
        members = vectors["members"].copy()
        members[new_rows] = len(vectors["ids"])
        cents = [normalise(points[parts == p].mean(axis=0, keepdims=True))[0] for p in (big, 1 - big)]
        centroids = np.vstack([vectors["centroids"], cents[1][None, :]])
        centroids[row] = cents[0]
        thresholds = np.append(vectors["thresholds"], vectors["thresholds"][row])
        return {"ids": [*vectors["ids"], new.id], "centroids": centroids, "thresholds": thresholds,
                "request_ids": vectors["request_ids"], "members": members}  # fmt: skip

    return store.edit(change)


def _free_name(proposal: Proposal, base: str) -> str:
    taken = {c.name for c in proposal.categories}
    name, n = base, 3
    while name in taken:
        name, n = f"{base.rsplit('_', 1)[0]}_{n}", n + 1
    return name


def _texts_for(log_path: str | Path, request_ids: list[str]) -> dict[str, str]:
    """Query text per request id, read page by page from the log."""
    from hybrid_common.chat import logged_query
    from router.traffic_log import TrafficLog

    wanted = set(request_ids)
    out: dict[str, str] = {}
    with TrafficLog(log_path, spool=False) as log:
        for page in log.pages():
            for _, record in page:
                if record.id in wanted and (query := logged_query(record.messages)):
                    out[record.id] = query
    return out


def labelled_queries(
    proposal: Proposal, vectors: dict[str, Any], texts: dict[str, str]
) -> list[tuple[str, str | None]]:
    """(query, label) per distinct query: an accepted category's name, else ``None`` (out of scope)."""
    accepted = {vectors["ids"].index(c.id): c.name for c in proposal.accepted}
    seen: set[str] = set()
    out: list[tuple[str, str | None]] = []
    for request_id, member in zip(vectors["request_ids"], vectors["members"], strict=True):
        text = texts.get(request_id)
        if not text or text.lower() in seen:
            continue
        seen.add(text.lower())
        out.append((text, accepted.get(int(member))))
    return out


class AppliedCategories:
    """What :func:`apply_categories` produced."""

    def __init__(self, version: str, path: Path, categories: list[str], private: list[str], counts: dict[str, int]) -> None:
        self.version, self.path, self.categories, self.private, self.counts = version, path, categories, private, counts

    def __repr__(self) -> str:
        return f"AppliedCategories({self.version!r}, categories={self.categories!r})"


def _bucket(text: str) -> int:
    return int(hashlib.sha256(text.lower().encode()).hexdigest()[:8], 16) % 100


def apply_categories(
    store_dir: str | Path,
    log_path: str | Path,
    registry_root: str | Path,
    *,
    calibration_percent: int = 20,
    max_per_category: int = 400,
    max_out_of_scope: int = 1500,
    seed: int = 0,
) -> AppliedCategories:
    """Fit, calibrate and promote a classifier for the accepted categories of the proposal in ``store_dir``."""
    from finetune.classifier_registry import ClassifierRegistry
    from finetune.classifier_update import update_classifier

    store = ProposalStore(store_dir)
    proposal = store.load()
    vectors = store.load_vectors()
    names = [c.name for c in proposal.accepted]
    if len(names) < 2:
        raise ProposalError(
            f"accept at least two categories before applying (accepted: {', '.join(names) or 'none'}); "
            "`router categories accept NAME ...` or `router discover --auto`"
        )
    texts = _texts_for(log_path, vectors["request_ids"])
    pairs = labelled_queries(proposal, vectors, texts)
    rng = random.Random(seed)
    by_label: dict[str | None, list[str]] = defaultdict(list)
    for text, label in pairs:
        by_label[label].append(text)
    for label, items in by_label.items():
        rng.shuffle(items)
        del items[max_out_of_scope if label is None else max_per_category :]
    train_texts, train_labels, cal_texts, cal_labels = [], [], [], []
    for label, items in sorted(by_label.items(), key=lambda kv: kv[0] or ""):
        for text in items:
            target = (cal_texts, cal_labels) if _bucket(text) < calibration_percent else (train_texts, train_labels)
            target[0].append(text)
            target[1].append(label)
    counts = {label or "(out of scope)": len(items) for label, items in by_label.items()}
    logger.info("labelled set: %s", counts)
    with tempfile.TemporaryDirectory(prefix="categories-") as tmp:
        path = update_classifier(
            None, train_texts, train_labels, calibration_texts=cal_texts, calibration_labels=cal_labels,
            out_dir=tmp, params={"fine_tune_epochs": 0},
        )  # fmt: skip
        registry = ClassifierRegistry(registry_root)
        private = [c.name for c in proposal.accepted if c.private]
        aliases = {c.name: c.aliases for c in proposal.accepted if c.aliases}
        version = registry.add(
            path, categories=names, source=f"router categories apply (proposal of {proposal.created_at})",
            note=f"labelled queries: {counts}", private_categories=private, aliases=aliases, move=True,
        )  # fmt: skip
    registry.promote(version.version, reason=f"router categories apply: {', '.join(names)}")
    return AppliedCategories(version.version, registry.artifact_path(version.version), names, private, counts)
