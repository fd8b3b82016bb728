"""The pure parts of discovery: clustering without k, keywords, the proposal file's validation."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from classifiers.discovery import (
    CategoryProposal,
    Proposal,
    ProposalError,
    ProposalStore,
    class_keywords,
    cluster_embeddings,
    name_from_keywords,
)


def _blobs(k: int, per: int, dim: int = 64, spread: float = 0.25, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    centres = rng.normal(size=(k, dim))
    points = np.concatenate([c + spread * rng.normal(size=(per, dim)) * np.linalg.norm(c) / np.sqrt(dim) for c in centres])
    return points.astype(np.float32), np.repeat(np.arange(k), per)


def _purity(labels: np.ndarray, truth: np.ndarray) -> float:
    hits = sum(np.bincount(truth[labels == c]).max() for c in np.unique(labels))
    return hits / len(labels)


def test_finds_the_number_of_clusters_itself() -> None:
    points, truth = _blobs(12, 60)
    result = cluster_embeddings(points)
    assert result.k == 12
    assert _purity(result.nearest, truth) > 0.98
    assert result.reduced_to is None


def test_a_large_input_is_reduced_before_the_quadratic_steps() -> None:
    points, truth = _blobs(8, 700)  # 5,600 points > max_points
    result = cluster_embeddings(points, max_points=1000)
    assert result.reduced_to is not None and result.reduced_to <= 1000
    assert 7 <= result.k <= 9
    assert _purity(result.nearest, truth) > 0.95


def test_clusters_below_the_minimum_share_are_not_categories() -> None:
    big, _ = _blobs(3, 300, seed=1)
    small, _ = _blobs(1, 4, seed=2)  # 4 of 904 points: 0.4 %, under the 0.5 % default
    result = cluster_embeddings(np.concatenate([big, small]))
    assert result.k == 3


def test_the_same_data_and_seed_give_the_same_granularity_and_clusters() -> None:
    points, _ = _blobs(10, 50, spread=0.45, seed=3)
    texts = [f"query {i % 7} about topic {i // 50}" for i in range(len(points))]
    first = cluster_embeddings(points, texts=texts, seed=4)
    second = cluster_embeddings(points.copy(), texts=list(texts), seed=4)
    assert first.estimate is not None and first.estimate == second.estimate
    assert np.array_equal(first.labels, second.labels) and np.array_equal(first.nearest, second.nearest)


def test_granularity_scales_the_number_of_categories_as_documented() -> None:
    points, truth = _blobs(12, 60)
    default = cluster_embeddings(points)
    coarse = cluster_embeddings(points, granularity=0.5)
    fine = cluster_embeddings(points, granularity=2.0)
    assert default.estimate is not None and default.estimate.categories == 12
    assert coarse.k == 6 and fine.k == 24  # 0.5 and 2 times the estimate
    # coarser categories are larger and less pure; finer ones stay pure (each a part of one blob)
    assert _purity(coarse.nearest, truth) < 0.6 and _purity(fine.nearest, truth) > 0.98
    exact = cluster_embeddings(points, categories=5)
    assert exact.k == 5 and exact.estimate is None


def test_word_features_join_the_embeddings_when_texts_are_given() -> None:
    points, truth = _blobs(4, 40, spread=2.0, seed=5)  # embeddings alone barely separate the groups
    words = ["alarm", "weather", "music", "refund"]
    texts = [f"please {words[t]} now" if i % 2 else f"{words[t]} question" for i, t in enumerate(truth)]
    without = cluster_embeddings(points, categories=4, lexical_weight=0.0)
    with_words = cluster_embeddings(points, texts=texts, categories=4, lexical_weight=1.0)
    assert _purity(with_words.nearest, truth) > _purity(without.nearest, truth)
    assert _purity(with_words.nearest, truth) > 0.95
    with pytest.raises(ValueError, match="texts for"):
        cluster_embeddings(points, texts=texts[:-1])


def test_too_few_queries_is_a_clear_error() -> None:
    with pytest.raises(ValueError, match="at least 16 queries"):
        cluster_embeddings(np.eye(10, dtype=np.float32))


def test_keywords_name_what_sets_a_cluster_apart() -> None:
    texts = ["where is my refund", "refund not received yet", "I want my money back refund",
             "change my shipping address", "update the shipping address please", "new address for shipping"]  # fmt: skip
    keywords = class_keywords(texts, [0, 0, 0, 1, 1, 1])
    assert keywords[0][0] == "refund"
    assert "shipping" in " ".join(keywords[1][:2]) or "address" in " ".join(keywords[1][:2])
    assert name_from_keywords(["refund", "money back"], set()) == "REFUND_MONEY"
    assert name_from_keywords(["refund", "money back"], {"REFUND_MONEY"}) == "REFUND_MONEY_2"


def _store_with(tmp_path: Path, names: list[str]) -> ProposalStore:
    store = ProposalStore(tmp_path)
    categories = [CategoryProposal(id=f"c{i}", name=n, size=10, share=0.1, cohesion=0.8) for i, n in enumerate(names)]
    vectors = {"ids": [c.id for c in categories], "centroids": np.eye(len(names), 4, dtype=np.float32),
               "thresholds": np.full(len(names), 0.5, dtype=np.float32), "request_ids": ["r0", "r1"],
               "members": np.array([0, 1])}  # fmt: skip
    store.save(Proposal(queries=2, categories=categories), vectors)
    return store


def test_a_hand_edited_file_is_validated_and_a_bad_one_changes_nothing(tmp_path: Path) -> None:
    store = _store_with(tmp_path, ["REFUND", "ORDER"])
    before = store.yaml_path.read_text()
    bad_edits = {
        "status: proposed": ("status: maybe", "status"),
        "name: ORDER": ("name: REFUND", "share the name"),
        "name: REFUND": ("name: 9lives", "must start with a letter"),
        "id: c1": ("id: c9", "no vectors"),
    }
    for old, (new, message) in bad_edits.items():
        store.yaml_path.write_text(before.replace(old, new, 1))
        with pytest.raises(ProposalError, match=message):
            store.load()
    store.yaml_path.write_text("categories: [unclosed")
    with pytest.raises(ProposalError, match="not valid YAML"):
        store.load()
    store.yaml_path.write_text(before)
    assert [c.name for c in store.load().categories] == ["REFUND", "ORDER"]


def test_an_invalid_edit_through_the_api_writes_nothing(tmp_path: Path) -> None:
    store = _store_with(tmp_path, ["REFUND", "ORDER"])
    before = store.yaml_path.read_bytes()

    def clash(proposal: Proposal, vectors: dict) -> None:
        proposal.categories[1].name = "REFUND"

    with pytest.raises(ProposalError, match="nothing was changed"):
        store.edit(clash)
    assert store.yaml_path.read_bytes() == before


@pytest.mark.slow
def test_without_a_classifier_the_packaged_encoder_is_exported_once_and_cached(tmp_path: Path) -> None:
    from classifiers import SentenceTransformerEncoder
    from classifiers.discovery import discovery_encoder

    first = discovery_encoder(None, tmp_path)
    exported = sorted(tmp_path.iterdir())
    assert len(exported) == 1 and (exported[0] / "model.onnx").is_file()
    mtime = (exported[0] / "model.onnx").stat().st_mtime_ns
    second = discovery_encoder(None, tmp_path)
    assert (exported[0] / "model.onnx").stat().st_mtime_ns == mtime and second.sha256 == first.sha256
    texts = ["where is my refund", "I want to change my shipping address"]
    reference = SentenceTransformerEncoder().encode(texts)
    assert np.all(np.sum(second.encode(texts) * reference, axis=1) > 0.999)


def test_names_of_people_and_places_never_become_keywords() -> None:
    texts = ["I need the invoice for Ms Hawkings", "download the invoice of Mr Miller", "invoice from David Miller please",
             "ship my order to Toronto", "order shipping to Toronto please", "where does my order ship"]  # fmt: skip
    keywords = class_keywords(texts, [0, 0, 0, 1, 1, 1])
    assert keywords[0][0] == "invoice" and keywords[1]
    flat = " ".join(k for ks in keywords.values() for k in ks)
    assert not any(name in flat for name in ("hawkings", "miller", "david", "toronto", "ms", "mr"))
