"""The Gemma turn format, kept importable here; defined in :mod:`hybrid_common.chat`."""

from hybrid_common.chat import *  # noqa: F403 - re-export
from hybrid_common.chat import __all__  # noqa: F401
