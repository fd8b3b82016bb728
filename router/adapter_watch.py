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
from router.canary import CanarySpec, canary_spec

__all__ = ["AdapterWatch", "CanaryAdapter", "ServingAdapter"]


@dataclass(frozen=True)
class CanaryAdapter:
    """A canary beside the promoted version (:mod:`router.canary`): its adapter, verified, and the rollout."""

    version: str
    adapter_path: Path | None
    spec: CanarySpec


@dataclass(frozen=True)
class ServingAdapter:
    """The promoted registry version: its adapter (None = the base model alone) and checksum, and
    the canary serving a share beside it, if any."""

    version: str
    adapter_path: Path | None
    adapter_sha256: str | None
    canary: CanaryAdapter | None = None


class AdapterWatch(RegistryWatch[ServingAdapter]):
    """Reports the registry's promoted adapter when it changes; thread-safe and cheap to call often."""

    def _state(self, version: str, data: dict[str, Any]) -> tuple[ServingAdapter, Path | None]:
        adapter = self.resolve(data.get("adapter_path"))
        sha = data.get("adapter_sha256")
        return ServingAdapter(version, adapter, sha if isinstance(sha, str) else None, self._canary(data)), adapter

    def _canary(self, data: dict[str, Any]) -> CanaryAdapter | None:
        """The canary block, verified now (once per change of serving.json): a canary whose adapter
        does not match its checksum is ignored, and the promoted version keeps all traffic."""
        spec = canary_spec(data)
        if spec is None:
            return None
        path = self.resolve(spec.files.get("adapter_path"))
        sha = spec.files.get("adapter_sha256")
        if not self._matches(spec.version, path, sha if isinstance(sha, str) else None):
            return None
        return CanaryAdapter(spec.version, path, spec)

    def _verify(self, state: ServingAdapter) -> bool:
        return self._matches(state.version, state.adapter_path, state.adapter_sha256)

    def _matches(self, version: str, path: Path | None, expected: str | None) -> bool:
        if path is None:
            return True
        try:
            actual = sha256_file(path)
        except OSError as err:
            self.warn("adapter of version %s unreadable (%s)", version, err)
            return False
        if expected and actual != expected:
            self.warn("adapter of version %s has sha256 %s, expected %s", version, actual, expected)
            return False
        return True
