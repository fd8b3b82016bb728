"""The package's public surface is exactly what ``__all__`` promises."""

import classifiers


def test_all_lists_the_public_api() -> None:
    assert classifiers.__all__ == [
        "EmbeddingClassifier",
        "OnnxEncoder",
        "Prediction",
        "SentenceTransformerEncoder",
        "default_encoder_path",
    ]
    for name in classifiers.__all__:
        assert getattr(classifiers, name).__module__.startswith("classifiers.")


def test_default_encoder_is_the_packaged_minilm() -> None:
    path = classifiers.default_encoder_path()
    assert (path / "modules.json").is_file()
    assert (path / "tokenizer.json").is_file()
