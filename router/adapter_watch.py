"""Follow a model registry's ``serving.json`` so the local tier picks up a promotion without a restart.

The router reads only ``serving.json`` and the adapter file it names (never the ``finetune``
package that writes them); polling is :class:`~router._registry_watch.RegistryWatch`'s. The
adapter's sha256 is computed once per change, and an adapter that does not match its checksum is
refused so the model already serving keeps serving.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from hybrid_common.files import sha256_file
from router._registry_watch import RegistryWatch

__all__ = ["AdapterWatch", "ServingAdapter"]


@dataclass(frozen=True)
class ServingAdapter:
    """The promoted registry version: its adapter (None = the base model alone) and checksum."""

    version: str
    adapter_path: Path | None
    adapter_sha256: str | None


class AdapterWatch(RegistryWatch[ServingAdapter]):
    """Reports the registry's promoted adapter when it changes; thread-safe and cheap to call often."""

    def _state(self, version: str, data: dict[str, Any]) -> tuple[ServingAdapter, Path | None]:
        adapter = self.resolve(data.get("adapter_path"))
        sha = data.get("adapter_sha256")
        return ServingAdapter(version, adapter, sha if isinstance(sha, str) else None), adapter

    def _verify(self, state: ServingAdapter) -> bool:
        if state.adapter_path is None:
            return True
        try:
            actual = sha256_file(state.adapter_path)
        except OSError as err:
            self.warn("adapter of version %s unreadable (%s)", state.version, err)
            return False
        if state.adapter_sha256 and actual != state.adapter_sha256:
            self.warn("adapter of version %s has sha256 %s, expected %s", state.version, actual, state.adapter_sha256)
            return False
        return True
