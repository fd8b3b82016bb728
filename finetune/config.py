"""Retrain settings: one pydantic model, read from the ``[retrain]`` table of ``router.toml``.

The paths and categories a retrain needs (traffic log, registry, categories the local tier
serves) default to the router's own configuration, so the trainer and the server cannot
disagree about where the data and the served model live.
"""

from __future__ import annotations

import tomllib
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from finetune.datasets import DatasetFilters
from finetune.evaluate import EvalConfig
from finetune.gate import GateConfig
from finetune.training import TrainConfig
from router.config import DEFAULT_REGISTRY
from router.errors import ConfigError

__all__ = ["RetrainConfig"]


class RetrainConfig(BaseModel):
    """Everything ``router retrain`` / :func:`finetune.retrain` reads."""

    model_config = ConfigDict(extra="forbid")

    log_path: Path = Field(Path(".router/traffic.sqlite3"), description="Traffic log to learn from.")
    registry_path: Path = Field(DEFAULT_REGISTRY, description="Model registry: versions, datasets, the serving pointer.")
    base_model: Path | None = Field(None, description="Base GGUF the adapter is trained for; default: the packaged model.")
    categories: list[str] | None = Field(None, description="Categories to learn; default: those the local tier serves.")
    include_local_accepted: bool = Field(True, description="Also learn from local answers users marked accepted.")
    extra_sources: list[Path] = Field(default_factory=list, description="User JSONL (OpenAI messages) or CSV (query, answer) files.")
    min_new_examples: int = Field(50, ge=1, description="Fewer new training examples than this: nothing to do.")
    max_train_examples: int = Field(1000, ge=1, description="Cap on examples per training run (the newest are kept).")
    measure_logits_speedup: bool = Field(False, description="Also time naive vs response-only logits (about a minute).")
    filters: DatasetFilters = Field(default_factory=DatasetFilters)
    training: TrainConfig = Field(default_factory=TrainConfig)
    evaluation: EvalConfig = Field(default_factory=EvalConfig)
    gate: GateConfig = Field(default_factory=GateConfig)

    @classmethod
    def from_router_config(cls, path: str | Path | None = None, **overrides: Any) -> RetrainConfig:
        """Defaults from the router's configuration (log, registry, local categories), then the
        TOML ``[retrain]`` table, then ``overrides``."""
        from router.config import load_config

        router_config = load_config(path)
        values: dict[str, Any] = {"log_path": router_config.log.path}
        if router_config.local.registry_path is not None:
            values["registry_path"] = router_config.local.registry_path
        if router_config.local.model_path is not None:
            values["base_model"] = router_config.local.model_path
        if router_config.routing.local_categories != "*":
            values["categories"] = list(router_config.routing.local_categories)
        toml_path = Path(path) if path else None
        if toml_path is not None and toml_path.is_file():
            with toml_path.open("rb") as fh:
                values.update(tomllib.load(fh).get("retrain", {}))
        values.update(overrides)
        try:
            return cls.model_validate(values)
        except ValidationError as err:
            problems = "; ".join(f"retrain.{'.'.join(map(str, e['loc']))}: {e['msg']}" for e in err.errors())
            raise ConfigError(f"invalid retrain configuration: {problems}") from err
