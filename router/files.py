"""Durable file helpers, kept importable here; defined in :mod:`hybrid_common.files`."""

from hybrid_common.files import *  # noqa: F403 - re-export
from hybrid_common.files import __all__  # noqa: F401
