"""Refitting the query classifier from labelled examples into a new artifact version.

One small real fit (frozen packaged MiniLM encoder, about 200 Bitext rows) is shared by the
module; everything else reuses it.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from classifiers import EmbeddingClassifier
from finetune.classifier_update import _start_params, labelled_texts, next_version_dir, update_classifier
from finetune.datasets import Example, examples_from_csv
from router.errors import ArtifactError, ConfigError
from tests.conftest import BITEXT_CSV

IN_SCOPE = ["ORDER", "REFUND", "INVOICE", "NEWSLETTER"]
OUT_OF_SCOPE = "FEEDBACK"


@pytest.fixture(scope="module")
def data() -> tuple[list[Example], list[Example]]:
    if not BITEXT_CSV.is_file():
        pytest.fail(f"Bitext dataset missing at {BITEXT_CSV}")
    rows = examples_from_csv(BITEXT_CSV, query_column="instruction", answer_column="response", category_column="category")
    by_category: dict[str, list[Example]] = {}
    for e in rows:
        if e.category is not None:
            by_category.setdefault(e.category, []).append(e)
    # Every 3rd row is held out, so calibration never shares a text with training.
    train = [e for c in IN_SCOPE for i, e in enumerate(by_category[c][:75]) if i % 3]
    held_out = [e for c in IN_SCOPE for i, e in enumerate(by_category[c][:75]) if not i % 3]
    held_out += [Example(e.messages, e.answer, None, e.source) for e in by_category[OUT_OF_SCOPE][:25]]
    return train, held_out


@pytest.fixture(scope="module")
def first_version(data: tuple[list[Example], list[Example]], tmp_path_factory: pytest.TempPathFactory) -> Path:
    train, held_out = data
    texts, labels = labelled_texts(train)
    cal_texts, cal_labels = labelled_texts(held_out, unlabelled_as_out_of_scope=True)
    out_dir = tmp_path_factory.mktemp("classifiers")
    return update_classifier(
        None,
        texts,
        labels,
        calibration_texts=cal_texts,
        calibration_labels=cal_labels,
        out_dir=out_dir,
        params={"fine_tune_epochs": 0, "C": 10.0},
    )


@pytest.mark.slow
def test_update_writes_a_calibrated_versioned_artifact(
    first_version: Path, data: tuple[list[Example], list[Example]]
) -> None:
    assert first_version.name == "v0001"
    model = EmbeddingClassifier.load(first_version)
    assert sorted(model.classes_.tolist()) == sorted(IN_SCOPE)
    assert model.get_params()["C"] == 10.0 and model.get_params()["fine_tune_epochs"] == 0
    assert 0.0 < model.threshold_ <= 1.0
    _, held_out = data
    cal_texts, cal_labels = labelled_texts(held_out, unlabelled_as_out_of_scope=True)
    assert model.score(cal_texts, cal_labels) > 0.7
    assert next_version_dir(first_version.parent).name == "v0002"


@pytest.mark.slow
def test_next_update_starts_from_the_current_recipe(first_version: Path) -> None:
    """A refit keeps the serving artifact's hyperparameters unless told otherwise."""
    saved = EmbeddingClassifier.load(first_version).get_params()
    start = _start_params(first_version, {"fine_tune_epochs": 2})
    assert start["C"] == 10.0  # from the artifact, not a default (EmbeddingClassifier().C differs)
    assert EmbeddingClassifier().get_params()["C"] != 10.0
    assert {k: v for k, v in start.items() if k not in {"fine_tune_epochs", "progress"}} == {
        k: v for k, v in saved.items() if k not in {"fine_tune_epochs", "progress"}
    }


def test_without_an_artifact_the_refit_starts_from_defaults() -> None:
    assert _start_params(None, None) == {"progress": False}
    assert _start_params(None, {"C": 3.0}) == {"progress": False, "C": 3.0}


@pytest.mark.slow
def test_update_can_calibrate_for_out_of_scope_recall(
    first_version: Path, data: tuple[list[Example], list[Example]], tmp_path: Path
) -> None:
    train, held_out = data
    texts, labels = labelled_texts(train)
    cal_texts, cal_labels = labelled_texts(held_out, unlabelled_as_out_of_scope=True)
    path = update_classifier(
        first_version,
        texts,
        labels,
        calibration_texts=cal_texts,
        calibration_labels=cal_labels,
        out_dir=tmp_path,
        objective="edge_recall",
        target_edge_recall=0.96,
    )
    model = EmbeddingClassifier.load(path)
    assert model.get_params()["C"] == 10.0  # the recipe of the version it started from
    out_of_scope = [t for t, c in zip(cal_texts, cal_labels, strict=True) if c is None]
    assert sum(p is None for p in model.predict(out_of_scope)) >= 0.96 * len(out_of_scope)


def test_labelled_texts_skips_or_marks_unlabelled() -> None:
    rows = [
        Example(({"role": "user", "content": "where is my order"},), "It is on its way to you.", "ORDER"),
        Example(({"role": "user", "content": "tell me a joke"},), "Why did the chicken cross?", None),
    ]
    assert labelled_texts(rows) == (["where is my order"], ["ORDER"])
    assert labelled_texts(rows, unlabelled_as_out_of_scope=True) == (
        ["where is my order", "tell me a joke"],
        ["ORDER", None],
    )


def test_update_rejects_bad_inputs_before_fitting(tmp_path: Path) -> None:
    texts, labels = ["where is my order", "I want a refund"], ["ORDER", "REFUND"]
    with pytest.raises(ConfigError, match="calibration"):
        update_classifier(None, texts, labels, calibration_texts=[], calibration_labels=[], out_dir=tmp_path)
    with pytest.raises(ConfigError, match="also appear in the training texts"):
        update_classifier(
            None, texts, labels, calibration_texts=texts[:1], calibration_labels=labels[:1], out_dir=tmp_path
        )
    with pytest.raises(ArtifactError):
        update_classifier(
            tmp_path / "no-such-artifact",
            texts,
            labels,
            calibration_texts=["cancel it"],
            calibration_labels=["ORDER"],
            out_dir=tmp_path,
        )
    assert next_version_dir(tmp_path / "absent").name == "v0001"


def _refit_in_process(texts, labels, cal_texts, cal_labels, out_dir: Path, c: float) -> Path:
    return update_classifier(
        None, texts, labels, calibration_texts=cal_texts, calibration_labels=cal_labels,
        out_dir=out_dir, params={"fine_tune_epochs": 0, "C": c},
    )  # fmt: skip


@pytest.mark.slow
def test_concurrent_updates_get_distinct_versions(data: tuple[list[Example], list[Example]], tmp_path: Path) -> None:
    """Two refits into one directory at once (two processes, as two cron jobs would be): each claims
    its own version, neither overwrites the other, nothing is left half-written."""
    import multiprocessing
    from concurrent.futures import ProcessPoolExecutor

    train, held_out = data
    texts, labels = labelled_texts(train)
    cal_texts, cal_labels = labelled_texts(held_out, unlabelled_as_out_of_scope=True)
    with ProcessPoolExecutor(2, mp_context=multiprocessing.get_context("spawn")) as pool:
        futures = [pool.submit(_refit_in_process, texts, labels, cal_texts, cal_labels, tmp_path, c) for c in (1.0, 2.0)]
        paths = [f.result() for f in futures]
    assert sorted(p.name for p in paths) == ["v0001", "v0002"]
    assert sorted(EmbeddingClassifier.load(p).get_params()["C"] for p in paths) == [1.0, 2.0]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["v0001", "v0002"]  # no staging left behind
