"""Follow a model registry's ``serving.json`` so the local tier picks up a promotion without a restart.

The router reads only ``serving.json`` and the adapter file it names (never the ``finetune``
package that writes them). Checking costs two ``stat`` calls at most once per poll interval; the
adapter's sha256 is computed once per change, and an adapter that does not match its checksum is
refused so the model already serving keeps serving.
"""

from __future__ import annotations

import json
import logging
import os
import threading
import time
from dataclasses import dataclass
from pathlib import Path

from hybrid_common.files import sha256_file

__all__ = ["AdapterWatch", "ServingAdapter"]

logger = logging.getLogger("router")

# (inode, mtime_ns, size): os.replace gives serving.json a new inode, so a rewrite of the same size
# within the filesystem's timestamp granularity is still noticed.
_Signature = tuple[int, int, int] | None


@dataclass(frozen=True)
class ServingAdapter:
    """The promoted registry version: its adapter (None = the base model alone) and checksum."""

    version: str
    adapter_path: Path | None
    adapter_sha256: str | None


def _signature(path: Path | None) -> _Signature:
    if path is None:
        return None
    try:
        st = os.stat(path)
    except OSError:
        return None
    return (st.st_ino, st.st_mtime_ns, st.st_size)


class AdapterWatch:
    """Reports the registry's promoted adapter when it changes; thread-safe and cheap to call often."""

    def __init__(self, registry_path: str | os.PathLike[str], *, poll_s: float = 1.0) -> None:
        self.root = Path(registry_path)
        self.serving_file = self.root / "serving.json"
        self.poll_s = poll_s
        self._lock = threading.Lock()
        self._next_check = 0.0
        self._seen: tuple[_Signature, _Signature] | None = None
        self._adapter_file: Path | None = None
        self.current: ServingAdapter | None = None

    def read(self) -> ServingAdapter | None:
        """The promoted version now, verified; None when nothing valid is promoted (no throttling)."""
        with self._lock:
            return self._check()

    def poll(self) -> ServingAdapter | None:
        """A newly promoted, verified version different from :attr:`current`; else None.

        Returns at once when called again within ``poll_s`` or while another thread is checking.
        """
        now = time.monotonic()
        if now < self._next_check or not self._lock.acquire(blocking=False):
            return None
        try:
            self._next_check = now + self.poll_s
            seen = (_signature(self.serving_file), _signature(self._adapter_file))
            if seen == self._seen:
                return None
            found = self._check()
            return None if found is None or found == self.current else found
        finally:
            self._lock.release()

    def accept(self, state: ServingAdapter | None) -> None:
        """Record ``state`` as the one being served (after the backend loaded it)."""
        self.current = state

    def retry(self) -> None:
        """Forget what was seen so the next poll reconsiders the same promotion."""
        self._seen = None
        self._next_check = 0.0

    def _check(self) -> ServingAdapter | None:
        state = self._parse()
        self._seen = (_signature(self.serving_file), _signature(self._adapter_file))
        if state is None or state.adapter_path is None:
            return state
        try:
            actual = sha256_file(state.adapter_path)
        except OSError as err:
            logger.warning("registry %s: adapter of version %s unreadable (%s); keeping the current model", self.root, state.version, err)
            return None
        if state.adapter_sha256 and actual != state.adapter_sha256:
            logger.warning(
                "registry %s: adapter of version %s has sha256 %s, expected %s; keeping the current model",
                self.root, state.version, actual, state.adapter_sha256,
            )
            return None
        return state

    def _parse(self) -> ServingAdapter | None:
        try:
            data = json.loads(self.serving_file.read_text(encoding="utf-8"))
        except FileNotFoundError:
            self._adapter_file = None
            return None
        except (OSError, ValueError) as err:
            logger.warning("registry %s: serving.json unreadable (%s); keeping the current model", self.root, err)
            return None
        version = data.get("version") if isinstance(data, dict) else None
        if not isinstance(version, str):
            logger.warning("registry %s: serving.json names no version; keeping the current model", self.root)
            return None
        raw = data.get("adapter_path")
        adapter = None
        if raw:
            adapter = Path(raw)
            if not adapter.is_absolute():
                adapter = self.root / adapter
        self._adapter_file = adapter
        sha = data.get("adapter_sha256")
        return ServingAdapter(version=version, adapter_path=adapter, adapter_sha256=sha if isinstance(sha, str) else None)
