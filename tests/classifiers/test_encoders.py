"""Serving (ONNX) embeddings match fitting (torch) embeddings; fine-tuning changes them."""

from __future__ import annotations

import numpy as np
import pytest

from classifiers import OnnxEncoder, SentenceTransformerEncoder
from router.errors import ArtifactError

pytestmark = pytest.mark.slow

TEXTS = [
    "I am still waiting on my card?",
    "What can I do if my card still hasn't arrived after 2 weeks and I need it for a trip abroad?",
    "hi",
    "Wie kann ich mein Passwort zurücksetzen?",
    "refund " * 300,  # longer than max_length: both sides must truncate the same way
]


@pytest.fixture(scope="module")
def torch_encoder() -> SentenceTransformerEncoder:
    return SentenceTransformerEncoder()


def _cosines(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    return (a * b).sum(axis=1) / np.linalg.norm(a, axis=1) / np.linalg.norm(b, axis=1)


def test_fp32_onnx_matches_torch(torch_encoder: SentenceTransformerEncoder) -> None:
    onnx = torch_encoder.to_onnx(optimize=True, quantize=False)
    reference = torch_encoder.encode(TEXTS)
    served = onnx.encode(TEXTS)
    assert served.shape == reference.shape == (len(TEXTS), 384)
    np.testing.assert_allclose(np.linalg.norm(served, axis=1), 1.0, rtol=1e-5)
    assert _cosines(served, reference).min() >= 0.999
    np.testing.assert_array_equal(served[0], onnx.embed(TEXTS[0]))


def test_int8_onnx_stays_close_to_torch(torch_encoder: SentenceTransformerEncoder) -> None:
    onnx = torch_encoder.to_onnx(optimize=True, quantize=True)
    assert len(onnx.model) < 40_000_000  # int8 weights: about a quarter of fp32's 90 MB
    assert _cosines(onnx.encode(TEXTS), torch_encoder.encode(TEXTS)).min() >= 0.95


def test_onnx_encoder_round_trips_through_a_directory(torch_encoder: SentenceTransformerEncoder, tmp_path) -> None:
    onnx = torch_encoder.to_onnx(optimize=False, quantize=False)
    onnx.save(tmp_path)
    reloaded = OnnxEncoder.from_dir(tmp_path, max_length=onnx.max_length)
    assert reloaded.sha256 == onnx.sha256
    np.testing.assert_array_equal(reloaded.encode(TEXTS[:2]), onnx.encode(TEXTS[:2]))


def test_two_thread_runs_match_one_thread_runs(torch_encoder: SentenceTransformerEncoder, tmp_path) -> None:
    torch_encoder.to_onnx(optimize=True, quantize=False).save(tmp_path)
    one = OnnxEncoder.from_dir(tmp_path, max_length=torch_encoder.max_length, num_threads=1)
    two = OnnxEncoder.from_dir(tmp_path, max_length=torch_encoder.max_length, num_threads=2)
    assert (one.num_threads, two.num_threads) == (1, 2)
    assert two._session.get_session_options().intra_op_num_threads == 2
    np.testing.assert_allclose(two.encode(TEXTS), one.encode(TEXTS), atol=1e-6)
    # Bulk encoding over several jobs runs one-thread sessions and gives the same embeddings.
    np.testing.assert_allclose(two.encode(TEXTS, n_jobs=2), one.encode(TEXTS), atol=1e-6)


def _class_margin(encoder: OnnxEncoder, texts: list[str], labels: list[str]) -> float:
    """Mean (cosine to own centroid - best cosine to another centroid): larger = better separated."""
    x = encoder.encode(texts)
    classes = sorted(set(labels))
    y = np.array([classes.index(label) for label in labels])
    centroids = np.stack([x[y == k].mean(axis=0) for k in range(len(classes))])
    centroids /= np.linalg.norm(centroids, axis=1, keepdims=True)
    sims = x @ centroids.T
    own = sims[np.arange(len(y)), y]
    sims[np.arange(len(y)), y] = -np.inf
    return float((own - sims.max(axis=1)).mean())


def test_fine_tuning_changes_and_separates_embeddings(fine_tuned, bitext) -> None:
    frozen_int8 = SentenceTransformerEncoder().to_onnx(quantize=True)
    texts, labels = bitext.train.texts, bitext.train.labels
    assert fine_tuned.encoder_.sha256 != frozen_int8.sha256
    assert _cosines(fine_tuned.encoder_.encode(texts[:40]), frozen_int8.encode(texts[:40])).mean() < 0.99
    assert _class_margin(fine_tuned.encoder_, texts, labels) > _class_margin(frozen_int8, texts, labels) + 0.01
    assert len(fine_tuned.fine_tune_losses_) == 1


def test_encoder_graph_without_the_head_is_refused(torch_encoder: SentenceTransformerEncoder) -> None:
    """A graph of the older layout (token states out, no head inputs) fails with a clear error."""
    from onnx import TensorProto, helper

    ids = helper.make_tensor_value_info("input_ids", TensorProto.INT64, [1, None])
    out = helper.make_tensor_value_info("last_hidden_state", TensorProto.INT64, [1, None])
    graph = helper.make_graph([helper.make_node("Identity", ["input_ids"], ["last_hidden_state"])], "old", [ids], [out])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    old = OnnxEncoder(model.SerializeToString(), torch_encoder.tokenizer_json())
    with pytest.raises(ArtifactError, match="fit the classifier again"):
        old.embed("where is my order")
