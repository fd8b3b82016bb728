"""The pieces every hybrid-router package shares, kept at the bottom of the import graph.

``router`` (serving), ``classifiers`` (where a query goes) and ``finetune`` (a better local model
from the log) all need the same errors, durable files, chat text and template, PII matcher,
degeneration guard and guarded-generation loop. Each exists once, here; this package imports
nothing of the project above it, so any package may use it. Names load on first access, so
importing it stays fast.

=================  ====================================================================
module             holds
=================  ====================================================================
``errors``         the one error tree (``RouterError`` and the OpenAI-compatible family)
``files``          atomic writes, checksums, manifests, numbered version directories
``chat``           message text flattening, the Gemma turn format
``pii``            PII patterns and the matcher (card numbers: issuer prefix + Luhn)
``guard``          the degeneration guard
``generation``     the guarded-generation loop used by serving and evaluation
``pruning``        a conversation cut to a context window (system prompt and recent turns)
``lazy``           PEP 562 lazy exports for package ``__init__`` modules
=================  ====================================================================
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from hybrid_common.lazy import lazy_exports

_EXPORTS: dict[str, str] = {
    "DEFAULT_PII_PATTERNS": "hybrid_common.pii",
    "DegenerationGuard": "hybrid_common.guard",
    "PiiMatcher": "hybrid_common.pii",
    "Pruned": "hybrid_common.pruning",
    "prune_to_fit": "hybrid_common.pruning",
    "RouterError": "hybrid_common.errors",
    "guarded_pieces": "hybrid_common.generation",
    "is_card_number": "hybrid_common.pii",
    "last_user_text": "hybrid_common.chat",
    "lazy_exports": "hybrid_common.lazy",
    "luhn_valid": "hybrid_common.pii",
    "message_text": "hybrid_common.chat",
    "render_prompt": "hybrid_common.chat",
}

__all__, __getattr__, __dir__ = lazy_exports("hybrid_common", _EXPORTS, globals())

if TYPE_CHECKING:
    from hybrid_common.chat import last_user_text, message_text, render_prompt
    from hybrid_common.errors import RouterError
    from hybrid_common.generation import guarded_pieces
    from hybrid_common.guard import DegenerationGuard
    from hybrid_common.lazy import lazy_exports
    from hybrid_common.pii import DEFAULT_PII_PATTERNS, PiiMatcher, is_card_number, luhn_valid
    from hybrid_common.pruning import Pruned, prune_to_fit
