"""``EmbeddingClassifier``: sentence embeddings + softmax head + calibrated edge threshold.

It follows scikit-learn's estimator contract (``__init__`` stores keyword arguments, ``fit``
returns ``self``, learned state ends in ``_``, ``classes_`` orders ``predict_proba``'s columns)
so ``clone``, ``get_params`` and grid search work. It does not inherit scikit-learn's
``BaseEstimator``: the router loads and runs this class, and scikit-learn must stay out of that
process; :class:`~classifiers._params.ParamsMixin` provides the same parameter protocol.

Fitting (torch, sentence-transformers, scikit-learn; ``pip install 'hybrid-router[train]'``):
optionally fine-tune the encoder, export it to ONNX, embed the training texts with that very
ONNX encoder and fit the head on those embeddings. Serving (``load``, ``predict``,
``classify``) needs only numpy, onnxruntime and tokenizers.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path
from typing import Any, Literal

import numpy as np

from hybrid_common.errors import ArtifactIntegrityError, ConfigError, NotFittedError

from ._artifact import read_artifact, write_artifact
from ._calibration import (
    EXEMPLAR_WEIGHTS,
    PROBA_WEIGHTS,
    best_accuracy_threshold,
    edge_recall_threshold,
    leave_one_out_exemplar_cosine,
    share_threshold,
)
from ._head import LinearHead, fit_head, softmax
from ._params import ParamsMixin
from .encoders import GraphRun, OnnxEncoder, SentenceTransformerEncoder

__all__ = ["EmbeddingClassifier", "Prediction"]

_ENCODER_DIR = "encoder"
_HEAD_FILE = "head.npz"
_DEFAULT_PROBA_WEIGHT = 0.5
_DEFAULT_EXEMPLAR_WEIGHT = 1.0


@dataclass(frozen=True, slots=True)
class Prediction:
    """One routing decision.

    ``category`` is the class to answer locally, or ``None`` for the edge (cloud) tier;
    ``label`` is the best class even when it was not confident enough; ``confidence`` is the
    score compared with ``threshold_``. ``embedding`` is the query's L2-normalised sentence
    embedding the decision was made from (set by :meth:`EmbeddingClassifier.classify`): the
    response cache compares questions with it at no extra encoder run.
    """

    category: str | None
    confidence: float
    label: str
    embedding: np.ndarray | None = field(default=None, repr=False, compare=False)


def _library_version() -> str:
    try:
        return version("hybrid-router")
    except PackageNotFoundError:
        return "0+unknown"


class EmbeddingClassifier(ParamsMixin):
    """Route a query to a category, or to ``None`` when it looks out of scope.

    Parameters
    ----------
    encoder:
        Local sentence-transformers directory to start from; ``None`` is the packaged
        all-MiniLM-L6-v2. Only used by ``fit``.
    C:
        Inverse L2 strength of the logistic-regression head.
    fine_tune_epochs:
        Epochs of cosine-softmax fine-tuning before the head is fitted; 0 keeps the encoder
        frozen (the fast baseline).
    fine_tune_lr, fine_tune_batch_size, logit_scale, label_smoothing, warmup_ratio:
        Fine-tuning optimiser settings (AdamW, linear warm-up then linear decay).
    quantize:
        Serve an int8 (dynamic, per-channel) ONNX encoder instead of fp32: about 3 ms instead of
        4.2–4.5 ms per query, but on Banking77 it lost OOS recall (76 % vs 81 %) and 0.1 points of
        closed-set accuracy (evals/README.md), hence off by default. The head is fitted on the
        served embeddings.
    threshold:
        Fixed edge threshold; ``None`` means 0.0 (never edge) until :meth:`calibrate`.
    proba_weight:
        Weight of the max class probability in the confidence (the rest is the max cosine to a
        training example); ``None`` lets :meth:`calibrate` choose it when it sees out-of-scope
        examples, else 0.5.
    exemplar_weight:
        Weight of the max cosine to a known out-of-scope example (the ``None``-labelled texts
        given to ``fit`` and to the latest ``calibrate``, kept as exemplars), subtracted from the
        confidence, so that queries like ones already known to be out of scope go to the edge.
        0 (the default) keeps no exemplars; ``None`` keeps them and lets :meth:`calibrate` choose
        the weight with the mix (1.0 until then). Opt-in because it trades away out-of-scope
        topics nobody labelled: on Banking77 (evals/README.md) exemplars raised in-scope
        accuracy from 86 % to 91 % and out-of-scope recall on the calibrated topics to 94 %, but
        recall on topics without exemplars fell from 78 % to 36 %, as the calibrated threshold
        relied on the exemplars. Use it when out-of-scope traffic is a known, recurring set of
        topics you have labelled examples of; with ``calibrate(objective="edge_recall",
        target_edge_recall=0.8)`` it reached 93.5 % in-scope accuracy at 81.8 % recall there.
    n_jobs:
        Threads for fitting (torch and bulk ONNX encoding); ``None`` means 1, as in scikit-learn.
        Two torch threads are faster only on an idle machine: with the local LLM generating on
        the other core, a fine-tuning step took 7.5 s with 2 threads and 0.8 s with 1. Serving
        runs one query per ONNX call on :func:`~classifiers.encoders.serving_threads` threads.
    random_state:
        Seed for fine-tuning and the head.
    progress:
        Show tqdm progress bars during long work.
    """

    def __init__(
        self,
        encoder: str | Path | None = None,
        *,
        C: float = 20.0,  # noqa: N803 - scikit-learn's name
        fine_tune_epochs: int = 1,
        fine_tune_lr: float = 1e-4,
        fine_tune_batch_size: int = 32,
        logit_scale: float = 20.0,
        label_smoothing: float = 0.1,
        warmup_ratio: float = 0.1,
        quantize: bool = False,
        threshold: float | None = None,
        proba_weight: float | None = None,
        exemplar_weight: float | None = 0.0,
        n_jobs: int | None = None,
        random_state: int = 0,
        progress: bool = True,
    ) -> None:
        self.encoder = encoder
        self.C = C
        self.fine_tune_epochs = fine_tune_epochs
        self.fine_tune_lr = fine_tune_lr
        self.fine_tune_batch_size = fine_tune_batch_size
        self.logit_scale = logit_scale
        self.label_smoothing = label_smoothing
        self.warmup_ratio = warmup_ratio
        self.quantize = quantize
        self.threshold = threshold
        self.proba_weight = proba_weight
        self.exemplar_weight = exemplar_weight
        self.n_jobs = n_jobs
        self.random_state = random_state
        self.progress = progress

    # ------------------------------------------------------------------ fitting

    def fit(self, texts: Sequence[str], labels: Sequence[str | None]) -> EmbeddingClassifier:
        """Fine-tune (optionally), export the serving encoder and fit the head.

        A label of ``None`` marks an out-of-scope example: it never becomes a class, during
        fine-tuning it is pushed towards a uniform class distribution, and with a nonzero (or
        ``None``) ``exemplar_weight`` it is kept as an out-of-scope exemplar.
        """
        texts, labels = _check_texts_labels(texts, labels)
        classes = sorted({label for label in labels if label is not None})
        if len(classes) < 2:
            raise ConfigError(f"fit needs at least two in-scope classes, got {classes}")
        self._validate_params()
        index = {name: i for i, name in enumerate(classes)}
        targets = np.array([index[label] if label is not None else -1 for label in labels], dtype=np.int64)
        n_jobs = self.n_jobs or 1

        source = SentenceTransformerEncoder(self.encoder)
        if self.fine_tune_epochs > 0:
            from ._finetune import FineTuneConfig, fine_tune

            config = FineTuneConfig(
                epochs=self.fine_tune_epochs,
                learning_rate=self.fine_tune_lr,
                batch_size=self.fine_tune_batch_size,
                logit_scale=self.logit_scale,
                label_smoothing=self.label_smoothing,
                warmup_ratio=self.warmup_ratio,
                seed=self.random_state,
                num_threads=n_jobs,
                progress=self.progress,
            )
            self.fine_tune_losses_ = fine_tune(source.model, texts, targets.tolist(), len(classes), config)
        else:
            self.fine_tune_losses_ = []
        encoder = source.to_onnx(optimize=True, quantize=self.quantize)
        # The head learns from exactly the embeddings serving will compute.
        embeddings = encoder.encode(texts, n_jobs=n_jobs, progress=self.progress)
        in_scope = targets >= 0
        exemplars = embeddings[~in_scope] if self.exemplar_weight != 0 else None
        self.head_ = fit_head(
            embeddings[in_scope], targets[in_scope], len(classes), C=self.C, seed=self.random_state, exemplars=exemplars
        )
        for stale in ("calibration_accuracy_", "calibration_edge_recall_"):
            self.__dict__.pop(stale, None)
        self.encoder_ = encoder
        self.encoder_source_ = str(source.path)
        self.classes_ = np.array(classes, dtype=object)
        self.threshold_ = float(self.threshold) if self.threshold is not None else 0.0
        self.proba_weight_ = float(self.proba_weight) if self.proba_weight is not None else _DEFAULT_PROBA_WEIGHT
        self.exemplar_weight_ = (
            float(self.exemplar_weight) if self.exemplar_weight is not None else _DEFAULT_EXEMPLAR_WEIGHT
        )
        return self

    def calibrate(
        self,
        texts: Sequence[str],
        labels: Sequence[str | None],
        *,
        objective: Literal["accuracy", "local_share", "edge_recall"] = "accuracy",
        target_local_share: float | None = None,
        target_edge_recall: float | None = None,
    ) -> EmbeddingClassifier:
        """Set ``threshold_`` from held-out data (``None`` labels = out of scope).

        ``objective="accuracy"`` maximises routed accuracy: an out-of-scope example is right
        when sent to the edge, an in-scope one when kept local with the right label.
        ``objective="edge_recall"`` sends at least ``target_edge_recall`` of the out-of-scope
        examples to the edge and, within that, keeps the most in-scope ones local with the
        right label: for when a missed out-of-scope query (a poor local answer) costs more than
        an unneeded cloud call. It is a share of *these* examples; on new traffic it varies by
        about ``sqrt(r(1 - r) / n)`` for ``n`` out-of-scope examples. With out-of-scope examples
        present, ``proba_weight=None`` and ``exemplar_weight=None`` let either objective choose
        the confidence mix too. ``objective="local_share"`` keeps ``target_local_share`` of these
        texts local.

        With a nonzero (or ``None``) ``exemplar_weight``, the out-of-scope texts also become
        exemplars, replacing those of an earlier ``calibrate``. Each is scored against the others
        only, so the threshold is chosen on the exemplar cosines an unseen query would get.
        ``calibration_accuracy_`` and ``calibration_edge_recall_`` record what the chosen
        setting does on these examples (recall is NaN without out-of-scope examples).
        """
        self._check_fitted()
        self._validate_params()
        texts, labels = _check_texts_labels(texts, labels)
        known = set(self.classes_.tolist())
        unknown = sorted({label for label in labels if label is not None and label not in known})
        if unknown:
            raise ConfigError(f"labels {unknown[:5]} are not in classes_; mark out-of-scope examples with None")
        out_of_scope = np.array([label is None for label in labels])
        _check_objective(objective, target_local_share, target_edge_recall, n_out_of_scope=int(out_of_scope.sum()))

        # Weights given as parameters (possibly set after fit) take precedence over learned ones.
        if self.proba_weight is not None:
            self.proba_weight_ = float(self.proba_weight)
        if self.exemplar_weight is not None:
            self.exemplar_weight_ = float(self.exemplar_weight)
        head = self.head_.with_calibration_exemplars(np.zeros((0, self.head_.dim), np.float32))
        runs = self._graph(texts, head)
        embeddings = np.stack([run.embedding for run in runs])
        proba, max_cosine, _ = _head_outputs(runs)
        new_exemplars = out_of_scope if self.exemplar_weight != 0 else np.zeros_like(out_of_scope)
        exemplar_cosine = leave_one_out_exemplar_cosine(embeddings, head.fit_exemplars, new_exemplars)
        self.head_ = head.with_calibration_exemplars(embeddings[new_exemplars])

        predicted = self.classes_[proba.argmax(axis=1)]
        label_correct = np.array([p == t for p, t in zip(predicted, labels, strict=True)])
        if objective != "local_share":
            self._choose_threshold_and_mix(
                proba, max_cosine, exemplar_cosine, label_correct, out_of_scope, target_edge_recall
            )
        confidence = self.head_.confidence(proba, max_cosine, exemplar_cosine, self.proba_weight_, self.exemplar_weight_)
        if objective == "local_share":
            self.threshold_ = share_threshold(confidence, float(target_local_share))  # type: ignore[arg-type]
        # What the chosen setting does on these examples (exemplars scored leave-one-out).
        local = confidence >= self.threshold_
        self.calibration_accuracy_ = float(np.mean(np.where(local, label_correct & ~out_of_scope, out_of_scope)))
        self.calibration_edge_recall_ = float(np.mean(~local[out_of_scope])) if out_of_scope.any() else float("nan")
        return self

    def _choose_threshold_and_mix(
        self,
        proba: np.ndarray,
        max_cosine: np.ndarray,
        exemplar_cosine: np.ndarray,
        label_correct: np.ndarray,
        out_of_scope: np.ndarray,
        target_edge_recall: float | None,
    ) -> None:
        """Grid over the mixes left free; best routed accuracy, or (with a target) recall then accuracy."""
        choose = out_of_scope.any()
        proba_weights = PROBA_WEIGHTS if self.proba_weight is None and choose else (self.proba_weight_,)
        has_exemplars = len(self.head_.exemplars) > 0
        exemplar_weights = (
            EXEMPLAR_WEIGHTS if self.exemplar_weight is None and choose and has_exemplars else (self.exemplar_weight_,)
        )
        candidates = []  # (threshold, the objective's score, proba weight, exemplar weight)
        for w in proba_weights:
            for e in exemplar_weights:
                confidence = self.head_.confidence(proba, max_cosine, exemplar_cosine, w, e)
                if target_edge_recall is None:
                    found = best_accuracy_threshold(confidence, label_correct, out_of_scope)
                else:
                    found = edge_recall_threshold(confidence, label_correct, out_of_scope, target_edge_recall)
                candidates.append((*found, w, e))
        # max keeps the first of equals: the grids start at 0, the simplest mix.
        self.threshold_, _, self.proba_weight_, self.exemplar_weight_ = max(candidates, key=lambda t: t[1])

    # ------------------------------------------------------------------ inference

    def predict_proba(self, texts: Sequence[str]) -> np.ndarray:
        """Class probabilities, columns in ``classes_`` order."""
        self._check_fitted()
        return self._scores(_check_texts(texts))[0]

    def predict(self, texts: Sequence[str]) -> list[str | None]:
        """Category per text, ``None`` where the query should go to the edge tier."""
        return [p.category for p in self._predictions(_check_texts(texts))]

    def classify(self, text: str) -> Prediction:
        """The request-path call: one query, one ONNX run, a softmax in numpy."""
        self._check_fitted()
        if not isinstance(text, str):
            raise ConfigError(f"classify expects a str, got {type(text).__name__}")
        runs = self._graph([text], self.head_)
        prediction = self._predictions_from(runs)[0]
        return Prediction(prediction.category, prediction.confidence, prediction.label, embedding=runs[0].embedding)

    def classify_many(self, texts: Sequence[str]) -> list[Prediction]:
        """:meth:`classify` for several texts in one encoder call (a conversation's turns); each keeps its embedding."""
        self._check_fitted()
        texts = _check_texts(texts)
        if not texts:
            return []
        runs = self._graph(texts, self.head_)
        return [
            Prediction(p.category, p.confidence, p.label, embedding=run.embedding)
            for p, run in zip(self._predictions_from(runs), runs, strict=True)
        ]

    def classify_embedding(self, embedding: np.ndarray) -> Prediction:
        """:meth:`classify` for an embedding already computed (no encoder run): the head in numpy.

        For embeddings the encoder did not produce directly, such as a conversation's turns mixed
        into one vector; it is re-normalised first, so cosines stay cosines. For an encoder
        embedding it agrees with :meth:`classify` to float rounding.
        """
        self._check_fitted()
        vector = np.asarray(embedding, dtype=np.float32).reshape(-1)
        if vector.shape[0] != self.head_.dim or not np.all(np.isfinite(vector)):
            raise ConfigError(f"expected a finite embedding of {self.head_.dim} values, got shape {vector.shape}")
        norm = float(np.linalg.norm(vector))
        vector = vector / norm if norm > 0 else vector
        head = self.head_
        exemplars = head.exemplars
        run = GraphRun(
            embedding=vector,
            logits=head.coef @ vector + head.intercept,
            max_cosine=float((head.memory @ vector).max()) if len(head.memory) else 0.0,
            max_exemplar_cosine=float((exemplars @ vector).max()) if len(exemplars) else 0.0,
        )
        prediction = self._predictions_from([run])[0]
        return Prediction(prediction.category, prediction.confidence, prediction.label, embedding=vector)

    def embed(self, text: str) -> np.ndarray:
        """The encoder's L2-normalised embedding of ``text``: cosine between two texts is a dot product."""
        self._check_fitted()
        return self.encoder_.embed(text)

    @property
    def encoder_is_base(self) -> bool:
        """Whether the encoder is its source model unchanged (not fine-tuned on the labels).

        Only then do its cosines match a score computed with the source model elsewhere (the
        answer similarity of offline evaluations, for instance).
        """
        return self.fine_tune_epochs == 0

    def score(self, texts: Sequence[str], labels: Sequence[str | None]) -> float:
        """Routed accuracy, with ``None`` predictions matching ``None`` labels (scikit-learn's ``score``)."""
        texts, labels = _check_texts_labels(texts, labels)
        predicted = self.predict(texts)
        return float(np.mean([p == t for p, t in zip(predicted, labels, strict=True)]))

    def _predictions(self, texts: list[str]) -> list[Prediction]:
        self._check_fitted()
        return self._predictions_from(self._graph(texts, self.head_))

    def _predictions_from(self, runs: list[GraphRun]) -> list[Prediction]:
        proba, max_cosine, exemplar_cosine = _head_outputs(runs)
        confidence = self.head_.confidence(
            proba, max_cosine, exemplar_cosine, self.proba_weight_, self.exemplar_weight_
        )
        best = proba.argmax(axis=1)
        return [
            Prediction(
                category=str(self.classes_[b]) if c >= self.threshold_ else None,
                confidence=float(c),
                label=str(self.classes_[b]),
            )
            for b, c in zip(best, confidence, strict=True)
        ]

    def _scores(self, texts: list[str]) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Class probabilities, max training cosine and max exemplar cosine per text."""
        return _head_outputs(self._graph(texts, self.head_))

    def _graph(self, texts: list[str], head: LinearHead) -> list[GraphRun]:
        """Run the ONNX serving graph with ``head``'s arrays.

        Every path (classify, predict, calibrate) runs the same graph one text at a time, so a
        query gets the same confidence whichever method scores it.
        """
        if len(texts) == 1:
            return [self.encoder_.run(texts[0], head.graph_inputs)]
        progress = self.progress and len(texts) > 1000
        return self.encoder_.run_many(texts, head.graph_inputs, n_jobs=self.n_jobs or 1, progress=progress)

    # ------------------------------------------------------------------ persistence

    def save(self, path: str | Path) -> Path:
        """Write one self-contained, checksummed artifact directory (atomic replace)."""
        self._check_fitted()

        def populate(staging: Path) -> dict[str, Any]:
            self.encoder_.save(staging / _ENCODER_DIR)
            self.head_.save(staging / _HEAD_FILE)
            params = {k: (str(v) if isinstance(v, Path) else v) for k, v in self.get_params().items()}
            return {
                "library_version": _library_version(),
                "created_at": datetime.now(UTC).isoformat(timespec="seconds"),
                "encoder": {
                    "source": self.encoder_source_,
                    "fine_tuned": self.fine_tune_epochs > 0,
                    "quantized": bool(self.quantize),
                    "file": f"{_ENCODER_DIR}/model.onnx",
                    **self.encoder_.metadata(),
                },
                "classes": [str(c) for c in self.classes_],
                "threshold": self.threshold_,
                "proba_weight": self.proba_weight_,
                "exemplar_weight": self.exemplar_weight_,
                "params": params,
            }

        written = write_artifact(path, populate)
        self.encoder_sha256_ = read_artifact(written)["encoder"]["sha256"]  # as load() sets it: the identity a follow-up detector checks
        return written

    @classmethod
    def load(cls, path: str | Path, *, threads: int | None = None) -> EmbeddingClassifier:
        """Load an artifact written by :meth:`save`, verifying format and every checksum.

        ``threads``: ONNX threads per query; ``None`` is :func:`~classifiers.encoders.serving_threads`.
        """
        path = Path(path)
        manifest = read_artifact(path)
        try:
            encoder_meta = manifest["encoder"]
            if manifest["files"].get(encoder_meta["file"]) != encoder_meta["sha256"]:
                raise ArtifactIntegrityError(f"{path}: encoder weights do not match the recorded encoder identity")
            model = cls(**manifest["params"])
            classes = [str(c) for c in manifest["classes"]]
            model.encoder_ = OnnxEncoder.from_dir(
                path / _ENCODER_DIR, max_length=int(encoder_meta["max_length"]), num_threads=threads
            )
            model.head_ = LinearHead.load(path / _HEAD_FILE, len(classes))
            model.encoder_source_ = str(encoder_meta["source"])
            model.encoder_sha256_ = str(encoder_meta["sha256"])  # what a follow-up detector's weights must match
            model.classes_ = np.array(classes, dtype=object)
            model.threshold_ = float(manifest["threshold"])
            model.proba_weight_ = float(manifest["proba_weight"])
            model.exemplar_weight_ = float(manifest["exemplar_weight"])
        except (KeyError, TypeError, ValueError) as err:
            raise ArtifactIntegrityError(f"{path}/manifest.json is missing or has a malformed field: {err}") from err
        return model

    # ------------------------------------------------------------------ checks

    def _check_fitted(self) -> None:
        if not hasattr(self, "head_"):
            raise NotFittedError(f"this {type(self).__name__} is not fitted yet; call fit() or load() first")

    def _validate_params(self) -> None:
        checks = {
            "C": self.C > 0,
            "fine_tune_epochs": self.fine_tune_epochs >= 0,
            "fine_tune_lr": self.fine_tune_lr > 0,
            "fine_tune_batch_size": self.fine_tune_batch_size >= 1,
            "logit_scale": self.logit_scale > 0,
            "label_smoothing": 0.0 <= self.label_smoothing < 1.0,
            "warmup_ratio": 0.0 <= self.warmup_ratio <= 1.0,
            "threshold": self.threshold is None or 0.0 <= self.threshold <= 1.0,
            "proba_weight": self.proba_weight is None or 0.0 <= self.proba_weight <= 1.0,
            "exemplar_weight": self.exemplar_weight is None or self.exemplar_weight >= 0.0,
            "n_jobs": self.n_jobs is None or self.n_jobs >= 1,
        }
        bad = [name for name, ok in checks.items() if not ok]
        if bad:
            described = ", ".join(f"{name}={getattr(self, name)!r}" for name in bad)
            raise ConfigError(f"invalid {type(self).__name__} parameters: {described}")


def _check_objective(
    objective: str, target_local_share: float | None, target_edge_recall: float | None, *, n_out_of_scope: int
) -> None:
    """Each objective takes its own target and no other; fail before any state changes."""
    if objective not in ("accuracy", "local_share", "edge_recall"):
        raise ConfigError(f"unknown calibration objective {objective!r}; use 'accuracy', 'local_share' or 'edge_recall'")
    if target_local_share is not None and objective != "local_share":
        raise ConfigError("target_local_share applies only to objective='local_share'")
    if target_edge_recall is not None and objective != "edge_recall":
        raise ConfigError("target_edge_recall applies only to objective='edge_recall'")
    if objective == "local_share" and (target_local_share is None or not 0.0 < target_local_share <= 1.0):
        raise ConfigError("objective='local_share' needs target_local_share in (0, 1]")
    if objective == "edge_recall":
        if target_edge_recall is None or not 0.0 < target_edge_recall <= 1.0:
            raise ConfigError("objective='edge_recall' needs target_edge_recall in (0, 1]")
        if n_out_of_scope == 0:
            raise ConfigError("objective='edge_recall' needs out-of-scope examples (labels of None) to measure recall")


def _head_outputs(runs: list[GraphRun]) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Softmax probabilities, max training cosine and max exemplar cosine, stacked over runs."""
    logits = np.stack([run.logits for run in runs])
    max_cosine = np.array([run.max_cosine for run in runs], dtype=np.float32)
    exemplar_cosine = np.array([run.max_exemplar_cosine for run in runs], dtype=np.float32)
    return softmax(logits), max_cosine, exemplar_cosine


def _check_texts(texts: Sequence[str]) -> list[str]:
    if isinstance(texts, str):
        raise ConfigError("expected a sequence of texts, got a single str (use classify() for one query)")
    texts = list(texts)
    if not all(isinstance(t, str) for t in texts):
        raise ConfigError("every text must be a str")
    return texts


def _check_texts_labels(texts: Sequence[str], labels: Sequence[str | None]) -> tuple[list[str], list[str | None]]:
    texts = _check_texts(texts)
    labels = [None if label is None else str(label) for label in labels]
    if len(texts) != len(labels):
        raise ConfigError(f"got {len(texts)} texts but {len(labels)} labels")
    if not texts:
        raise ConfigError("no texts given")
    return texts, labels
