"""The base of hybrid-router's error tree: the errors that need no ``openai`` import.

:mod:`hybrid_common.errors` is the tree (and re-exports these, the same classes); this module
exists so that configuration and the CLI can raise ``ConfigError`` without importing the openai
SDK, which takes most of a second (``router stats`` should answer in well under one).
"""

from __future__ import annotations

__all__ = ["ArtifactError", "ArtifactIntegrityError", "ConfigError", "MissingDependencyError", "NotFittedError", "RouterError"]


class RouterError(Exception):
    """Base class of every error raised by hybrid-router."""


class ConfigError(RouterError, ValueError):
    """The configuration is invalid; the message names the field and the fix."""


class MissingDependencyError(RouterError, ImportError):
    """An optional dependency is not installed; the message carries the pip command."""

    def __init__(self, package: str, extra: str | None = None, purpose: str = "") -> None:
        hint = f"pip install 'hybrid-router[{extra}]'" if extra else f"pip install {package}"
        why = f" (needed for {purpose})" if purpose else ""
        super().__init__(f"{package} is not installed{why}. Install it with: {hint}")
        self.package = package


class NotFittedError(RouterError, ValueError, AttributeError):
    """An estimator was used before ``fit``; same contract as scikit-learn's NotFittedError."""


class ArtifactError(RouterError):
    """A saved artifact cannot be read or written."""


class ArtifactIntegrityError(ArtifactError):
    """An artifact's checksum, format version or identity does not match its manifest."""
