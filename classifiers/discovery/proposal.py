"""The category proposal: a YAML file a person reviews and edits, plus a sidecar of vectors.

``proposal.yaml`` holds what a reviewer decides: each cluster's ``name``, ``status``
(``proposed`` / ``accepted`` / ``rejected``) and ``private`` flag, with the evidence beside it
(share of traffic, cohesion, how alike the cloud's answers are, PII share, keywords, redacted
examples). ``proposal.npz`` holds what a machine needs: each category's centroid and matching
threshold (so a later run matches new traffic to accepted categories first, and names never
churn) and the logged request ids that formed each cluster (what ``apply`` labels).

An edited file is validated as a whole before anything is written; a bad file raises
:class:`ProposalError` naming every problem, and nothing changes.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Literal

import numpy as np
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from hybrid_common.errors import ConfigError
from hybrid_common.files import write_text_atomic

__all__ = [
    "CategoryProposal",
    "Proposal",
    "ProposalError",
    "ProposalStore",
    "set_status",
]

FORMAT = "hybrid-router/category-proposal"
_NAME = re.compile(r"^[A-Za-z][A-Za-z0-9_.-]{0,63}$")
_HEADER = """\
# hybrid-router category proposal, written by `router discover`.
# Review it: set `status` to accepted or rejected, change `name`, set `private: true` for a category
# whose queries must never leave the machine. Or use `router categories accept|reject|rename|merge|split`.
# Then `router categories apply` turns the accepted categories into a classifier version.
# Categories marked `proposed: true` are the smallest clean set covering the target share of traffic.
"""


class ProposalError(ConfigError):
    """A proposal file or an edit of it is invalid; nothing was changed."""


class CategoryProposal(BaseModel):
    """One cluster of logged queries, as a candidate category."""

    model_config = ConfigDict(extra="forbid")

    id: str = Field(description="Stable id: kept across runs, renames and merges.")
    name: str
    status: Literal["proposed", "accepted", "rejected"] = "proposed"
    private: bool = Field(False, description="Queries of this category never leave the machine.")
    proposed: bool = Field(False, description="In the smallest clean set covering the target share.")
    clean: bool = Field(False, description="Cohesive enough (and answers alike enough) to serve from one model.")
    size: int = Field(ge=0)
    share: float = Field(ge=0, le=1)
    new_queries: int = Field(0, ge=0, description="Queries matched to it in the latest run.")
    cohesion: float = Field(description="Mean cosine of its queries to their centroid.")
    answer_similarity: float | None = Field(None, description="Mean pairwise cosine of sampled cloud answers.")
    pii_share: float = Field(0.0, ge=0, le=1, description="Share of its queries that were private or matched PII.")
    keywords: list[str] = Field(default_factory=list)
    examples: list[str] = Field(default_factory=list, description="Closest to the centroid (PII redacted).")
    boundary: list[str] = Field(default_factory=list, description="Farthest members (PII redacted).")
    aliases: list[str] = Field(default_factory=list, description="Earlier names: evidence recorded under them is this category's.")
    merged_from: list[str] = Field(default_factory=list)

    @field_validator("name")
    @classmethod
    def _valid_name(cls, name: str) -> str:
        if not _NAME.match(name):
            raise ValueError(f"category name {name!r} must start with a letter and hold only letters, digits, '_', '.', '-'")
        return name


class Proposal(BaseModel):
    """Everything in ``proposal.yaml``."""

    model_config = ConfigDict(extra="forbid")

    format: Literal["hybrid-router/category-proposal"] = FORMAT
    format_version: Literal[1] = 1
    created_at: str = Field(default_factory=lambda: datetime.now(timezone.utc).isoformat(timespec="seconds"))
    log: str = ""
    encoder_sha256: str = ""
    queries: int = 0
    unassigned_share: float = 0.0
    target_share: float = 0.8
    proposed_share: float = 0.0
    categories: list[CategoryProposal] = Field(default_factory=list)

    @model_validator(mode="after")
    def _unique(self) -> Proposal:
        for field in ("id", "name"):
            seen: set[str] = set()
            for category in self.categories:
                value = getattr(category, field)
                if value in seen:
                    raise ValueError(f"two categories share the {field} {value!r}")
                seen.add(value)
        return self

    def find(self, key: str) -> CategoryProposal:
        """A category by name, alias or id."""
        for category in self.categories:
            if key in (category.name, category.id) or key in category.aliases:
                return category
        known = ", ".join(c.name for c in self.categories) or "none"
        raise ProposalError(f"no category {key!r} in the proposal (known: {known})")

    @property
    def accepted(self) -> list[CategoryProposal]:
        return [c for c in self.categories if c.status == "accepted"]


class ProposalStore:
    """``proposal.yaml`` and ``proposal.npz`` in one directory (the data directory's ``categories``)."""

    def __init__(self, root: str | Path) -> None:
        self.root = Path(root)

    @property
    def yaml_path(self) -> Path:
        return self.root / "proposal.yaml"

    @property
    def vectors_path(self) -> Path:
        return self.root / "proposal.npz"

    @property
    def html_path(self) -> Path:
        return self.root / "report.html"

    def exists(self) -> bool:
        return self.yaml_path.is_file()

    def load(self) -> Proposal:
        """The validated proposal (its vectors are read to check it; :meth:`edit` keeps them)."""
        return self._load()[0]

    def _load(self) -> tuple[Proposal, dict[str, Any]]:
        import yaml

        if not self.yaml_path.is_file():
            raise ProposalError(f"no proposal at {self.yaml_path}: run `router discover` first")
        try:
            data = yaml.safe_load(self.yaml_path.read_text(encoding="utf-8"))
        except yaml.YAMLError as err:
            raise ProposalError(f"{self.yaml_path} is not valid YAML: {err}") from err
        if not isinstance(data, dict):
            raise ProposalError(f"{self.yaml_path}: expected a mapping with `categories`, got {type(data).__name__}")
        try:
            proposal = Proposal.model_validate(data)
        except ValidationError as err:
            problems = "; ".join(f"{'.'.join(map(str, e['loc']))}: {e['msg']}" for e in err.errors())
            raise ProposalError(f"{self.yaml_path} is invalid, nothing was changed: {problems}") from err
        vectors = self.load_vectors()
        missing = [c.name for c in proposal.categories if c.id not in vectors["ids"]]
        if missing:
            raise ProposalError(
                f"{self.yaml_path}: categories {', '.join(missing)} have no vectors in {self.vectors_path.name} "
                "(ids must not be edited; add categories by `router discover`, not by hand)"
            )
        return proposal, vectors

    def load_vectors(self) -> dict[str, Any]:
        """``ids`` (category ids), ``centroids``, ``thresholds``, ``request_ids`` and ``members`` (category index per request)."""
        if not self.vectors_path.is_file():
            raise ProposalError(f"no {self.vectors_path}: run `router discover` first")
        with np.load(self.vectors_path, allow_pickle=False) as data:
            return {
                "ids": [str(x) for x in data["ids"]],
                "centroids": data["centroids"].astype(np.float32),
                "thresholds": data["thresholds"].astype(np.float32),
                "request_ids": [str(x) for x in data["request_ids"]],
                "members": data["members"].astype(np.int64),
            }

    def save(self, proposal: Proposal, vectors: dict[str, Any] | None = None) -> None:
        """Write the YAML (and the vectors when given), each atomically."""
        import yaml

        self.root.mkdir(parents=True, exist_ok=True)
        if vectors is not None:
            tmp = self.vectors_path.with_suffix(".tmp.npz")
            np.savez_compressed(
                tmp, ids=np.array(vectors["ids"], dtype=str), centroids=np.asarray(vectors["centroids"], dtype=np.float32),
                thresholds=np.asarray(vectors["thresholds"], dtype=np.float32),
                request_ids=np.array(vectors["request_ids"], dtype=str), members=np.asarray(vectors["members"], dtype=np.int64),
            )  # fmt: skip
            tmp.replace(self.vectors_path)
        body = yaml.safe_dump(proposal.model_dump(mode="json"), sort_keys=False, allow_unicode=True, width=120)
        write_text_atomic(self.yaml_path, _HEADER + body)

    def edit(self, change: Any) -> Proposal:
        """Load, apply ``change(proposal, vectors)`` (which may return new vectors, a dict), validate, save."""
        proposal, vectors = self._load()
        returned = change(proposal, vectors)
        new_vectors = returned if isinstance(returned, dict) else None
        try:
            checked = Proposal.model_validate(proposal.model_dump())
        except ValidationError as err:
            problems = "; ".join(e["msg"] for e in err.errors())
            raise ProposalError(f"that edit would make the proposal invalid, nothing was changed: {problems}") from err
        self.save(checked, new_vectors)
        return checked


def set_status(proposal: Proposal, keys: Iterable[str], status: Literal["accepted", "rejected", "proposed"]) -> list[str]:
    """Set ``status`` on the named categories; returns their names."""
    names = []
    for key in keys:
        category = proposal.find(key)
        category.status = status
        names.append(category.name)
    return names
