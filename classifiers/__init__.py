"""Decide where a query goes: a local category, or ``None`` for the cloud tier.

Fitting needs the ``train`` extra (torch, sentence-transformers, scikit-learn); loading and
predicting need only numpy, onnxruntime and tokenizers.
"""

from .embedding import EmbeddingClassifier, Prediction
from .encoders import OnnxEncoder, SentenceTransformerEncoder, default_encoder_path

__all__ = [
    "EmbeddingClassifier",
    "OnnxEncoder",
    "Prediction",
    "SentenceTransformerEncoder",
    "default_encoder_path",
]
