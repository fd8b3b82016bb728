"""Refit and recalibrate the query classifier from labelled examples, as a new artifact version.

The router keeps serving the current artifact while this runs; the result is a new, versioned
directory (``out_dir/v0001``, ``v0002`` ...): the artifact is saved complete under a temporary
name, then renamed to the next free number (:func:`hybrid_common.files.publish_numbered_dir`,
the rule the model registry uses too), so two updates running at once get two versions and
switching to one (or back) is a path change.
The refit starts from the current artifact's hyperparameters so an update changes the data,
not the recipe. Fitting needs the ``train`` extra (torch, sentence-transformers).
"""

from __future__ import annotations

import logging
import re
import shutil
import uuid
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any, Literal

from hybrid_common.errors import ConfigError
from hybrid_common.files import publish_numbered_dir

from .datasets import Example

__all__ = ["labelled_texts", "next_version_dir", "update_classifier"]

logger = logging.getLogger(__name__)

_VERSION = re.compile(r"^v(\d{4,})$")


def labelled_texts(
    examples: Iterable[Example], *, unlabelled_as_out_of_scope: bool = False
) -> tuple[list[str], list[str | None]]:
    """(query, category) pairs for the classifier from :class:`Example` rows.

    Examples without a category are skipped unless ``unlabelled_as_out_of_scope``, which labels
    them ``None`` (the classifier's out-of-scope marker). Note that a logged category is the
    router's own prediction; only reviewed or imported labels make a sound training signal.
    Follow-ups are skipped: their category is their conversation's, so "ok do it" logged under
    ORDER would teach the classifier that "ok do it" *is* ORDER, which it is only in context.
    """
    texts: list[str] = []
    labels: list[str | None] = []
    for example in examples:
        if example.followup or (example.category is None and not unlabelled_as_out_of_scope):
            continue
        if example.query.strip():
            texts.append(example.query)
            labels.append(example.category)
    return texts, labels


def next_version_dir(out_dir: str | Path) -> Path:
    """``out_dir/vNNNN`` one past the highest existing version now (``v0001`` for the first).

    Informational only: another writer may take it first. :func:`update_classifier` claims its
    version atomically instead.
    """
    out_dir = Path(out_dir)
    existing = [int(m.group(1)) for p in out_dir.glob("v*") if (m := _VERSION.match(p.name))] if out_dir.is_dir() else []
    return out_dir / f"v{max(existing, default=0) + 1:04d}"


def update_classifier(
    current_path: str | Path | None,
    texts: Sequence[str],
    labels: Sequence[str | None],
    *,
    calibration_texts: Sequence[str],
    calibration_labels: Sequence[str | None],
    out_dir: str | Path,
    params: Mapping[str, Any] | None = None,
    objective: Literal["accuracy", "local_share", "edge_recall"] = "accuracy",
    target_local_share: float | None = None,
    target_edge_recall: float | None = None,
) -> Path:
    """Fit a new classifier on ``texts``/``labels``, calibrate it, save it as the next version.

    ``current_path`` (the serving artifact, if any) supplies the starting hyperparameters;
    ``params`` overrides them (e.g. ``fine_tune_epochs=0`` for a fast head-only refit). The
    classifier does not store its training data, so ``texts`` must be the full labelled set,
    not only the new rows. Calibration data must be held out from ``texts``; ``None`` labels
    mark out-of-scope queries. Returns the new artifact directory.
    """
    from classifiers import EmbeddingClassifier

    if len(calibration_texts) == 0:
        raise ConfigError("update_classifier needs held-out calibration_texts to set the edge threshold")
    overlap = set(texts) & set(calibration_texts)
    if overlap:
        raise ConfigError(f"{len(overlap)} calibration texts also appear in the training texts, e.g. {next(iter(overlap))!r}")

    model = EmbeddingClassifier()
    model.set_params(**_start_params(current_path, params))
    model.fit(texts, labels)
    model.calibrate(
        calibration_texts,
        calibration_labels,
        objective=objective,
        target_local_share=target_local_share,
        target_edge_recall=target_edge_recall,
    )

    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    staging = out_dir / f".staging-{uuid.uuid4().hex}"
    try:
        model.save(staging)
        path = out_dir / publish_numbered_dir(staging, out_dir)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    logger.info(
        "classifier %s: %d classes, threshold %.3f, calibration accuracy %s",
        path,
        len(model.classes_),
        model.threshold_,
        getattr(model, "calibration_accuracy_", "n/a"),
    )
    return path


def _start_params(current_path: str | Path | None, params: Mapping[str, Any] | None) -> dict[str, Any]:
    """The current artifact's constructor parameters (if any), with ``params`` on top."""
    from classifiers import EmbeddingClassifier

    start = EmbeddingClassifier.load(current_path).get_params() if current_path is not None else {}
    return {**start, "progress": False, **(params or {})}
