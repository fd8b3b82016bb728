"""The error tree, kept where applications import it from; defined in :mod:`hybrid_common.errors`.

See that module for the tree. Every class here *is* the class defined there (not a copy), so
``except router.errors.BadRequestError`` catches what ``classifiers`` and ``finetune`` raise.
"""

from hybrid_common.errors import *  # noqa: F403 - re-export of the whole public tree
from hybrid_common.errors import __all__  # noqa: F401
