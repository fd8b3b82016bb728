"""Follow a classifier registry so a promotion or rollback reaches a running router without a restart.

The router reads only the registry's ``serving.json`` and the promoted artifact's manifest (never
the ``finetune`` package that writes them). A manifest whose digest is not the one promoted is
refused at the poll; the files it lists are checked when the classifier loads, in a background
thread, so a request never waits for more than the poll check. Whatever fails, the classifier
already serving keeps serving.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from hybrid_common.errors import ArtifactError, MissingDependencyError
from hybrid_common.files import MANIFEST_DIGEST_KEY, MANIFEST_FILE, read_manifest
from router._registry_watch import RegistryWatch

__all__ = ["ClassifierWatch", "FollowedClassifier", "ServingClassifier"]

logger = logging.getLogger("router")


@dataclass(frozen=True)
class ServingClassifier:
    """The promoted registry version: its artifact directory and the manifest digest promoted."""

    version: str
    artifact_path: Path | None
    manifest_sha256: str | None
    private_categories: frozenset[str] = frozenset()
    """Categories the version marks private: added to ``routing.private_categories`` while it serves."""
    aliases: tuple[tuple[str, tuple[str, ...]], ...] = ()
    """(category, its earlier names): evidence recorded under an earlier name is the category's."""


class ClassifierWatch(RegistryWatch[ServingClassifier]):
    """Reports the registry's promoted classifier when it changes; thread-safe and cheap to call often."""

    serving_what = "the current classifier"

    def _state(self, version: str, data: dict[str, Any]) -> tuple[ServingClassifier, Path | None]:
        artifact = self.resolve(data.get("artifact_path"))
        sha = data.get("manifest_sha256")
        manifest = artifact / MANIFEST_FILE if artifact is not None else None
        private = data.get("private_categories") or []
        aliases = data.get("aliases") or {}
        return ServingClassifier(
            version, artifact, sha if isinstance(sha, str) else None, frozenset(str(c) for c in private),
            tuple((str(k), tuple(str(a) for a in v)) for k, v in sorted(aliases.items()) if isinstance(v, list)),
        ), manifest

    def _verify(self, state: ServingClassifier) -> bool:
        if state.artifact_path is None:
            self.warn("serving.json names no artifact_path for classifier version %s", state.version)
            return False
        try:
            digest = read_manifest(state.artifact_path)[MANIFEST_DIGEST_KEY]
        except ArtifactError as err:
            self.warn("classifier version %s refused: %s", state.version, err)
            return False
        if state.manifest_sha256 and digest != state.manifest_sha256:
            self.warn(
                "classifier version %s has manifest sha256 %s, expected %s", state.version, digest, state.manifest_sha256
            )
            return False
        return True


class FollowedClassifier:
    """The classifier a registry serves, with the version that serves.

    The first call loads the promoted version (callers wait, as they would for a configured
    artifact); later promotions load in a background thread and are swapped in as one
    ``(classifier, version)`` pair, so a request sees the old pair or the new one, never a mix.
    """

    def __init__(
        self, watch: ClassifierWatch, load: Callable[[Path], Any], on_swap: Callable[[ServingClassifier], None] | None = None
    ) -> None:
        self.watch = watch
        self._load = load
        self._on_swap = on_swap
        self._lock = threading.Lock()
        self._started = False
        self._loader: threading.Thread | None = None
        self._current: tuple[Any, str | None, frozenset[str]] = (None, None, frozenset())

    def get(self) -> tuple[Any, str | None, frozenset[str]]:
        """The classifier serving now, its version and the categories it marks private, read as one
        tuple (a swap never shows a new classifier with the old private set); ``(None, None,
        frozenset())`` before any usable promotion."""
        if not self._started:
            with self._lock:
                if not self._started:
                    state = self.watch.read()
                    if state is None:
                        logger.warning(
                            "classifier registry %s: no usable promoted version; every 'auto' query is an edge "
                            "case until one is promoted", self.watch.root,
                        )  # fmt: skip
                    else:
                        self._swap(state, first=True)
                    self._started = True
            return self._current
        loader = self._loader
        if loader is None or not loader.is_alive():  # no poll while a load runs: its change is not lost
            state = self.watch.poll()
            if state is not None:
                self._loader = threading.Thread(target=self._swap, args=(state,), name="router-classifier-load", daemon=True)
                self._loader.start()
        return self._current

    def wait(self, timeout: float | None = None) -> None:
        """Wait for a background load in progress, if any (tests, orderly shutdown)."""
        loader = self._loader
        if loader is not None:
            loader.join(timeout)

    def _swap(self, state: ServingClassifier, *, first: bool = False) -> None:
        before = self._current[1]
        try:
            classifier = self._load(state.artifact_path)
        except Exception as err:  # a bad promotion must not take routing down
            if first and isinstance(err, MissingDependencyError):
                raise  # the request that needs the classifier says what to install
            logger.warning(
                "classifier registry %s: version %s failed to load (%s); still serving %s",
                self.watch.root, state.version, err, before or "no classifier",
            )  # fmt: skip
            return
        if self._on_swap is not None:
            self._on_swap(state)
        self._current = (classifier, state.version, state.private_categories)
        self.watch.accept(state)
        logger.info("classifier registry %s: now serving version %s (was %s)", self.watch.root, state.version, before or "none")
