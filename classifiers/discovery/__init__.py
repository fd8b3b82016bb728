"""Find the categories of a traffic log nobody labelled: cluster, describe, propose for review.

Pure parts only (no traffic log, no router): :func:`cluster_embeddings` (and
:func:`estimate_categories`, how many clusters), :func:`class_keywords`,
:func:`propose` and the proposal file (:class:`ProposalStore`). Reading the log and applying a
reviewed proposal live in ``finetune`` (``finetune.discover``, ``finetune.apply_categories``).
Needs scikit-learn (the ``train`` extra).
"""

from ._clustering import ClusterResult, cluster_embeddings, normalise
from ._corpus import PRIVATE_REASONS, LoggedQueries, discovery_encoder, read_logged_queries
from ._granularity import GranularityEstimate, estimate_categories
from ._discover import DiscoveryConfig, DiscoveryResult, propose
from ._keywords import class_keywords, name_from_keywords
from .proposal import CategoryProposal, Proposal, ProposalError, ProposalStore, set_status
from .report import print_table, write_html

__all__ = [
    "PRIVATE_REASONS",
    "CategoryProposal",
    "ClusterResult",
    "DiscoveryConfig",
    "DiscoveryResult",
    "GranularityEstimate",
    "LoggedQueries",
    "Proposal",
    "ProposalError",
    "ProposalStore",
    "class_keywords",
    "cluster_embeddings",
    "discovery_encoder",
    "estimate_categories",
    "name_from_keywords",
    "normalise",
    "print_table",
    "propose",
    "read_logged_queries",
    "set_status",
    "write_html",
]
