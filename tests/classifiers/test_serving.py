"""Loading and predicting must not import the training stack (checked in a fresh interpreter)."""

from __future__ import annotations

import subprocess
import sys
import time
from pathlib import Path

import pytest

pytestmark = pytest.mark.slow

HEAVY = ("torch", "transformers", "sentence_transformers", "sklearn", "scipy")

PROGRAM = """
import sys
from classifiers import EmbeddingClassifier
model = EmbeddingClassifier.load(sys.argv[1])
model.predict(["where is my order", "I need a refund"])
model.predict_proba(["where is my order"])
print(model.classify("cancel my order").label)
print("imported:" + ",".join(sorted(m for m in {heavy!r} if m in sys.modules)))
"""


def test_serving_path_imports_no_training_libraries(artifact: Path) -> None:
    result = subprocess.run(
        [sys.executable, "-c", PROGRAM.format(heavy=HEAVY), str(artifact)],
        capture_output=True,
        text=True,
        check=True,
        cwd=Path(__file__).resolve().parents[2],
        env={"HF_HUB_OFFLINE": "1", "PATH": "/usr/bin:/bin"},
    )
    label, imported = result.stdout.strip().splitlines()
    assert label == "cancel_order"
    assert imported == "imported:", f"serving {imported}"


def test_single_query_classify_is_fast(fine_tuned) -> None:
    text = "How long does delivery to Spain take?"
    for _ in range(10):
        fine_tuned.classify(text)
    timings = []
    for _ in range(50):
        start = time.perf_counter()
        fine_tuned.classify(text)
        timings.append(time.perf_counter() - start)
    # Generous bound for a shared CI core; the lead's benchmark measures the real p50 (~3 ms).
    assert sorted(timings)[len(timings) // 2] < 0.05
