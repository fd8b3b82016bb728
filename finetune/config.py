"""Retrain settings: one pydantic model, read from the ``[retrain]`` table of ``router.toml``.

The file is found the way the router finds it (an explicit path, else ``$ROUTER_CONFIG``), and the
paths, categories and serving settings a retrain needs (traffic log, registry, categories the
local tier serves, the ``[local]`` table evaluation generates with) default to the router's own
configuration, so the trainer and the server cannot disagree about where the data and the served
model live, or about how answers are generated.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, SecretStr, ValidationError

from finetune.datasets import DatasetFilters
from finetune.evaluate import EvalConfig
from finetune.gate import GateConfig
from finetune.training import TrainConfig
from hybrid_common.errors import ConfigError
from router.config import LocalConfig, RouterConfig, default_log_path, default_registry_path, load_config

__all__ = ["RetrainConfig", "serving_classifier_path", "validate_retrain_table"]


class RetrainConfig(BaseModel):
    """Everything ``router retrain`` / :func:`finetune.retrain` reads."""

    model_config = ConfigDict(extra="forbid")

    log_path: Path = Field(default_factory=default_log_path, description="Traffic log to learn from (default: the router's).")
    log_url: SecretStr | None = Field(
        None, description="A PostgreSQL traffic log (postgresql://...) to learn from instead of log_path (default: the router's log.url)."
    )
    registry_path: Path = Field(
        default_factory=default_registry_path, description="Model registry: versions, datasets, the serving pointer."
    )
    base_model: Path | None = Field(None, description="Base GGUF the adapter is trained for; default: the packaged model.")
    categories: list[str] | None = Field(
        None, description="Categories to learn; default: those the local tier serves, or every category when none is set."
    )
    include_local_accepted: bool = Field(True, description="Also learn from local answers users marked accepted.")
    label_with: Path | None = Field(
        None,
        description="Classifier artifact that labels rows logged without a category (traffic from before any "
        "classifier, e.g. categories found by `router discover`); default: the router's serving classifier.",
    )
    extra_sources: list[Path] = Field(default_factory=list, description="User JSONL (OpenAI messages) or CSV (query, answer) files.")
    keep_snapshots: int = Field(
        3, ge=1, description="Dataset snapshots kept besides those a registry version was trained on; older ones are deleted."
    )
    max_pool_examples: int = Field(
        100_000,
        ge=1,
        description="Cap on the cleaned log examples kept between retrains (a sample by prompt hash, the same whatever "
        "the arrival order); bounds memory and the near-duplicate pass whatever the log's size.",
    )
    min_new_examples: int = Field(50, ge=1, description="Fewer new training examples than this: nothing to do.")
    max_train_examples: int = Field(1000, ge=1, description="Cap on examples per training run (a seeded random choice from the snapshot).")
    measure_logits_speedup: bool = Field(False, description="Also time naive vs response-only logits (about a minute).")
    canary_share: float = Field(
        0.0, ge=0, lt=1,
        description="Above 0: a version that passes the offline gate first serves this share of local traffic as a "
        "canary, and running routers promote or roll it back on live evidence ([canary] settings); 0: promoted at once.",
    )  # fmt: skip
    filters: DatasetFilters = Field(default_factory=DatasetFilters)
    training: TrainConfig = Field(default_factory=TrainConfig)
    evaluation: EvalConfig = Field(default_factory=EvalConfig)
    gate: GateConfig = Field(default_factory=GateConfig)
    serving: LocalConfig = Field(
        default_factory=LocalConfig, description="The router's [local] settings: evaluation generates with them."
    )

    @property
    def log_location(self) -> str | Path:
        """The log to read: the PostgreSQL URL when set, else the SQLite path."""
        return self.log_url.get_secret_value() if self.log_url is not None else self.log_path

    @classmethod
    def from_router_config(cls, source: str | Path | RouterConfig | None = None, **overrides: Any) -> RetrainConfig:
        """Defaults from the router's configuration (log, registry, local categories, ``[local]``),
        then its ``[retrain]`` table, then ``overrides``.

        ``source`` is a ``router.toml`` path, an already loaded :class:`RouterConfig`, or None for
        the router's own discovery (``$ROUTER_CONFIG``, environment, defaults).
        """
        router_config = source if isinstance(source, RouterConfig) else load_config(source)
        values: dict[str, Any] = {"log_path": router_config.log.path, "log_url": router_config.log.url, "serving": router_config.local}
        if router_config.local.registry_path is not None:
            values["registry_path"] = router_config.local.registry_path
        if router_config.local.model_path is not None:
            values["base_model"] = router_config.local.model_path
        serving_classifier = serving_classifier_path(router_config)
        if serving_classifier is not None:
            values["label_with"] = serving_classifier
        local_categories = router_config.routing.local_categories
        if local_categories != "*" and local_categories:
            values["categories"] = list(local_categories)
        values.update(router_config.retrain)
        values.update(overrides)
        try:
            return cls.model_validate(values)
        except ValidationError as err:
            problems = "; ".join(f"retrain.{'.'.join(map(str, e['loc']))}: {e['msg']}" for e in err.errors())
            raise ConfigError(f"invalid retrain configuration: {problems}") from err


def serving_classifier_path(config: RouterConfig) -> Path | None:
    """The classifier artifact the router serves: its configured path, or its registry's promoted version."""
    if config.classifier.path is not None:
        return Path(config.classifier.path)
    if config.classifier.registry_path is not None:
        from finetune.classifier_registry import ClassifierRegistry

        registry = ClassifierRegistry(config.classifier.registry_path)
        serving = registry.serving()
        return registry.artifact_path(serving.version) if serving is not None else None
    return None


def validate_retrain_table(config: RouterConfig) -> None:
    """Check the ``[retrain]`` table of a loaded router configuration (``router config`` calls this)."""
    RetrainConfig.from_router_config(config)
