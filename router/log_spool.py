"""A local, append-only spool for traffic-log rows the database would not take.

A locked database, a full disk or a database server that is down must not lose the record of
a request that was answered. Such a row is appended here, one JSON line, flushed and fsynced
before the response goes back, and written to the database later, when it takes writes again.

* Appends and drains take an exclusive ``flock`` on the spool file, so several router processes
  can share one spool beside one log, and a process killed mid-append leaves at most one partial
  last line, which a drain skips (and reports).
* A drain inserts with the row's own primary key and ignores rows already present, so a drain cut
  short (crash between insert and truncation) never duplicates a row when it is redone.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import logging
import os
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

__all__ = ["LogSpool"]

logger = logging.getLogger("router")


class LogSpool:
    """JSON lines at ``path``; :meth:`append` is durable when it returns."""

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)

    @contextlib.contextmanager
    def _locked(self) -> Iterator[int]:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_APPEND, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
            yield fd
        finally:
            os.close(fd)  # releases the lock

    def append(self, row: dict[str, Any]) -> None:
        """Write ``row`` and fsync; raises ``OSError`` when even the spool cannot be written."""
        line = (json.dumps(row, ensure_ascii=False, default=str) + "\n").encode("utf-8")
        with self._locked() as fd:
            os.write(fd, line)
            os.fsync(fd)

    def pending(self) -> bool:
        """Whether anything waits in the spool (one ``stat``; cheap enough for every write)."""
        try:
            return self.path.stat().st_size > 0
        except FileNotFoundError:
            return False

    def drain(self, insert: Callable[[list[dict[str, Any]]], None]) -> int:
        """Hand every spooled row to ``insert`` (all or nothing), then empty the spool; rows drained.

        ``insert`` raising leaves the spool as it was, to be drained later.
        """
        if not self.pending():
            return 0
        with self._locked() as fd:
            with open(fd, "rb", closefd=False) as fh:
                fh.seek(0)
                lines = fh.read().splitlines()
            rows, broken = [], 0
            for line in lines:
                try:
                    rows.append(json.loads(line))
                except ValueError:  # a partial line from a process killed mid-append: never acknowledged
                    broken += 1
            if rows:
                insert(rows)
            os.ftruncate(fd, 0)
            os.fsync(fd)
        if broken:
            logger.warning("traffic log spool %s: skipped %d partial line(s) left by a crash", self.path, broken)
        return len(rows)
