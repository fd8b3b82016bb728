"""Follow a registry's ``serving.json`` cheaply: what the adapter and classifier watches share.

A registry (written by ``finetune``, never imported here) names its promoted version in
``serving.json``, with the file that identifies it (an adapter, an artifact manifest). Checking
costs two ``stat`` calls at most once per poll interval; the version is parsed and verified only
when one of the two files changed, and a version that fails verification is refused so the one
already serving keeps serving.
"""

from __future__ import annotations

import json
import logging
import os
import threading
import time
from pathlib import Path
from typing import Any, Generic, TypeVar

__all__ = ["RegistryWatch"]

logger = logging.getLogger("router")

S = TypeVar("S")

# (inode, mtime_ns, size): os.replace gives serving.json a new inode, so a rewrite of the same size
# within the filesystem's timestamp granularity is still noticed.
_Signature = tuple[int, int, int] | None


def _signature(path: Path | None) -> _Signature:
    if path is None:
        return None
    try:
        st = os.stat(path)
    except OSError:
        return None
    return (st.st_ino, st.st_mtime_ns, st.st_size)


class RegistryWatch(Generic[S]):
    """Reports the registry's promoted version when it changes; thread-safe and cheap to call often.

    Subclasses turn ``serving.json`` into a state (:meth:`_state`, which also names the file to
    watch) and check it (:meth:`_verify`).
    """

    #: What keeps serving when a promotion is refused, for the warning.
    serving_what = "the current model"

    def __init__(self, registry_path: str | os.PathLike[str], *, poll_s: float = 1.0) -> None:
        self.root = Path(registry_path)
        self.serving_file = self.root / "serving.json"
        self.poll_s = poll_s
        self._lock = threading.Lock()
        self._next_check = 0.0
        self._seen: tuple[_Signature, _Signature] | None = None
        self._watched: Path | None = None
        self.current: S | None = None

    def read(self) -> S | None:
        """The promoted version now, verified; None when nothing valid is promoted (no throttling)."""
        with self._lock:
            return self._check()

    def poll(self) -> S | None:
        """A newly promoted, verified version different from :attr:`current`; else None.

        Returns at once when called again within ``poll_s`` or while another thread is checking.
        """
        now = time.monotonic()
        if now < self._next_check or not self._lock.acquire(blocking=False):
            return None
        try:
            self._next_check = now + self.poll_s
            seen = (_signature(self.serving_file), _signature(self._watched))
            if seen == self._seen:
                return None
            found = self._check()
            return None if found is None or found == self.current else found
        finally:
            self._lock.release()

    def accept(self, state: S | None) -> None:
        """Record ``state`` as the one being served (after it was loaded)."""
        self.current = state

    def retry(self) -> None:
        """Forget what was seen so the next poll reconsiders the same promotion."""
        self._seen = None
        self._next_check = 0.0

    def resolve(self, raw: Any) -> Path | None:
        """A path named in ``serving.json``; a relative one is relative to the registry."""
        if not raw or not isinstance(raw, str):
            return None
        path = Path(raw)
        return path if path.is_absolute() else self.root / path

    def warn(self, message: str, *args: Any) -> None:
        logger.warning(f"registry %s: {message}; keeping {self.serving_what}", self.root, *args)

    def _state(self, version: str, data: dict[str, Any]) -> tuple[S, Path | None]:
        """The state ``serving.json`` describes, and the file whose change means a new state."""
        raise NotImplementedError

    def _verify(self, state: S) -> bool:
        """Whether ``state`` may be served (warn through :meth:`warn` when not)."""
        raise NotImplementedError

    def _check(self) -> S | None:
        state = self._parse()
        self._seen = (_signature(self.serving_file), _signature(self._watched))
        return state if state is not None and self._verify(state) else None

    def _parse(self) -> S | None:
        try:
            data = json.loads(self.serving_file.read_text(encoding="utf-8"))
        except FileNotFoundError:
            self._watched = None
            return None
        except (OSError, ValueError) as err:
            self.warn("serving.json unreadable (%s)", err)
            return None
        version = data.get("version") if isinstance(data, dict) else None
        if not isinstance(version, str):
            self.warn("serving.json names no version")
            return None
        state, self._watched = self._state(version, data)
        return state
