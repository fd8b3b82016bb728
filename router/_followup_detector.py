"""A learned follow-up detector beside the word rule: is this turn leaning on its conversation?

The word rule (:func:`router._conversation.context_dependent`) follows its writer: it routes 0.97
of the follow-ups right on the wording it was written from and 0.80 on a writer it never saw
(``make eval-followup-writers``). This detector reads the turn's sentence embedding, the one the
request's classification already computed (no encoder run of its own), with a three-class
logistic regression: follow-up, out-of-scope request, self-contained support question. Three
classes, not two: a two-class detector learned "not a Bitext question" and read "tell me a joke"
as a follow-up, which would answer it locally about the old topic. A turn is context-dependent
when the rule says so *or* the follow-up class reaches ``threshold``.

The weights belong to one encoder: a detector records the SHA-256 of the encoder it was trained
on, and a classifier with another encoder (a promotion that fine-tuned it, another model) gets
the rule alone, never a detector reading embeddings it was not trained on.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from router.errors import ConfigError

__all__ = ["FollowUpDetector"]

FOLLOW_UP, OUT_OF_SCOPE, SELF_CONTAINED = "follow_up", "out_of_scope", "self_contained"
_FORMAT = "hybrid-router/follow-up-detector"


@dataclass(frozen=True, eq=False)
class FollowUpDetector:
    """Softmax weights over sentence embeddings (rows in ``classes`` order) and the encoder they fit."""

    coef: np.ndarray
    intercept: np.ndarray
    classes: tuple[str, ...]
    encoder_sha256: str
    threshold: float = 0.7

    def __post_init__(self) -> None:
        if FOLLOW_UP not in self.classes or self.coef.shape != (len(self.classes), self.coef.shape[1]):
            raise ConfigError(f"a follow-up detector needs a {FOLLOW_UP!r} class and one weight row per class")
        if self.intercept.shape != (len(self.classes),) or not 0.0 < self.threshold <= 1.0:
            raise ConfigError("a follow-up detector needs one intercept per class and a threshold in (0, 1]")

    @property
    def dim(self) -> int:
        return int(self.coef.shape[1])

    def fits(self, classifier: Any) -> bool:
        """Whether ``classifier``'s embeddings are the ones these weights were trained on."""
        return getattr(classifier, "encoder_sha256_", None) == self.encoder_sha256

    def follow_up_probability(self, embedding: np.ndarray) -> float:
        vector = np.asarray(embedding, dtype=np.float64).reshape(-1)
        if vector.shape[0] != self.dim:
            raise ConfigError(f"expected an embedding of {self.dim} values, got {vector.shape[0]}")
        logits = self.coef @ vector + self.intercept
        weights = np.exp(logits - logits.max())
        return float(weights[self.classes.index(FOLLOW_UP)] / weights.sum())

    def is_follow_up(self, prediction: Any) -> bool:
        """The verdict on one turn's prediction (its ``embedding``; a prediction without one: no)."""
        embedding = getattr(prediction, "embedding", None)
        return embedding is not None and self.follow_up_probability(embedding) >= self.threshold

    @classmethod
    def fit(
        cls,
        examples: dict[str, Sequence[np.ndarray]],
        *,
        encoder_sha256: str,
        c: float = 1.0,
        threshold: float = 0.7,
    ) -> FollowUpDetector:
        """Train on embeddings per class (``follow_up``, ``out_of_scope``, ``self_contained``), balanced."""
        from sklearn.linear_model import LogisticRegression

        if set(examples) != {FOLLOW_UP, OUT_OF_SCOPE, SELF_CONTAINED} or not all(len(v) for v in examples.values()):
            raise ConfigError(f"fit needs examples of each of {FOLLOW_UP}, {OUT_OF_SCOPE}, {SELF_CONTAINED}")
        names = tuple(sorted(examples))
        x = np.vstack([np.asarray(examples[name], dtype=np.float64) for name in names])
        y = np.concatenate([np.full(len(examples[name]), i) for i, name in enumerate(names)])
        model = LogisticRegression(C=c, class_weight="balanced", max_iter=3000).fit(x, y)
        return cls(model.coef_.copy(), model.intercept_.copy(), names, encoder_sha256, threshold)

    def save(self, path: str | Path) -> Path:
        """One ``.npz`` file: the weights and, as JSON, the classes, threshold and encoder identity."""
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        meta = {"format": _FORMAT, "classes": list(self.classes), "encoder_sha256": self.encoder_sha256, "threshold": self.threshold}
        tmp = path.with_name(path.name + ".tmp.npz")
        np.savez(tmp, coef=self.coef, intercept=self.intercept, meta=np.array(json.dumps(meta)))
        tmp.replace(path)
        return path

    @classmethod
    def load(cls, path: str | Path, *, threshold: float | None = None) -> FollowUpDetector:
        path = Path(path)
        try:
            with np.load(path, allow_pickle=False) as data:
                meta = json.loads(str(data["meta"]))
                coef, intercept = data["coef"].astype(np.float64), data["intercept"].astype(np.float64)
        except (OSError, KeyError, ValueError) as err:
            raise ConfigError(f"{path} is not a follow-up detector: {err}") from err
        found = meta.get("format") if isinstance(meta, dict) else None
        if found != _FORMAT:
            raise ConfigError(f"{path} is not a follow-up detector (format {found!r})")
        try:
            chosen = float(meta["threshold"]) if threshold is None else threshold
            return cls(coef, intercept, tuple(meta["classes"]), str(meta["encoder_sha256"]), chosen)
        except (KeyError, TypeError, ValueError) as err:
            raise ConfigError(f"{path} has a malformed follow-up detector field: {err}") from err
