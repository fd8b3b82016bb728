"""Shared, session-scoped fixtures: small Bitext slices and classifiers fitted once."""

from __future__ import annotations

import csv
import os
from dataclasses import dataclass
from pathlib import Path

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")

BITEXT = Path(__file__).resolve().parents[3] / "shared" / "datasets" / "bitext_customer_support" / "Bitext_Sample_Customer_Support_Training_Dataset.csv"
IN_SCOPE = ["cancel_order", "check_invoice", "delivery_period", "get_refund", "recover_password", "track_order"]
OUT_OF_SCOPE = ["newsletter_subscription", "review"]


@dataclass(frozen=True)
class Split:
    texts: list[str]
    labels: list[str | None]


@dataclass(frozen=True)
class Slices:
    train: Split  # 6 intents x 34 rows
    holdout: Split  # 6 intents x 12 rows + 2 out-of-scope intents x 12 rows (labelled None)
    unseen_out_of_scope: list[str]  # 2 out-of-scope intents x 24 more rows, in no split above


@pytest.fixture(scope="session")
def bitext() -> Slices:
    if not BITEXT.is_file():
        pytest.fail(f"Bitext dataset not found at {BITEXT}: the tests need ../shared beside the repository")
    by_intent: dict[str, list[str]] = {}
    with BITEXT.open(newline="", encoding="utf-8") as fh:
        for row in csv.DictReader(fh):
            by_intent.setdefault(row["intent"], []).append(row["instruction"])
    train = Split([], [])
    holdout = Split([], [])
    unseen_out_of_scope: list[str] = []
    for intent in IN_SCOPE:
        texts = by_intent[intent]
        train.texts.extend(texts[:34])
        train.labels.extend([intent] * 34)
        holdout.texts.extend(texts[34:46])
        holdout.labels.extend([intent] * 12)
    for intent in OUT_OF_SCOPE:
        holdout.texts.extend(by_intent[intent][:12])
        holdout.labels.extend([None] * 12)
        unseen_out_of_scope.extend(by_intent[intent][12:36])
    return Slices(train, holdout, unseen_out_of_scope)


@pytest.fixture(scope="session")
def frozen(bitext: Slices):
    """Frozen-encoder classifier (fp32 ONNX), fitted once; tests must not mutate it."""
    from classifiers import EmbeddingClassifier

    return EmbeddingClassifier(fine_tune_epochs=0, quantize=False, progress=False).fit(
        bitext.train.texts, bitext.train.labels
    )


@pytest.fixture(scope="session")
def fine_tuned(bitext: Slices):
    """One epoch of fine-tuning on 204 rows, int8 serving encoder; tests must not mutate it.

    No label smoothing: on six easy classes it caps the cosine margin below the frozen one, and
    the encoder test checks that fine-tuning widens margins.
    """
    from classifiers import EmbeddingClassifier

    return EmbeddingClassifier(
        fine_tune_epochs=1, fine_tune_lr=1e-4, label_smoothing=0.0, quantize=True, progress=False
    ).fit(
        bitext.train.texts, bitext.train.labels
    )


@pytest.fixture(scope="session")
def artifact(fine_tuned, tmp_path_factory: pytest.TempPathFactory) -> Path:
    return fine_tuned.save(tmp_path_factory.mktemp("artifact") / "classifier")
