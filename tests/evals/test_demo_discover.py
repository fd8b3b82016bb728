"""The zero-label journey's own pieces: its router.toml is valid, its replay never repeats collected traffic."""

from __future__ import annotations

from pathlib import Path

from evals.demo_discover import build_parser, choose_queries, purity, write_config


def test_the_journeys_config_is_one_valid_router_toml(tmp_path: Path) -> None:
    from finetune.categories_cli import validate_discover_table
    from finetune.config import RetrainConfig
    from router import RouterConfig

    args = build_parser().parse_args([])  # as `make demo-discover` runs it
    path = write_config(tmp_path / "router.toml", workdir=tmp_path, cloud_model="openai/recorded", api_base="http://127.0.0.1:1/v1", args=args)
    config = RouterConfig.from_toml(path)
    assert config.routing.local_categories == "*"
    assert config.classifier.registry_path == tmp_path / "classifiers"
    validate_discover_table(config)
    retrain = RetrainConfig.from_router_config(config)
    assert retrain.categories is None  # every discovered category is learnt
    assert retrain.label_with is None  # nothing applied yet: filled in from the classifier registry once it is
    assert retrain.filters.max_eval_per_category == args.eval_per_category >= 30


def test_replayed_queries_were_never_collected() -> None:
    rows = [{"instruction": f"query {i}", "category": "A"} for i in range(300)] + [{"instruction": "query 7", "category": "A"}]
    collected, replayed = choose_queries(rows, 200, 80)
    assert len(collected) == 200 and len(replayed) == 80
    assert not {r["instruction"] for r in collected} & {r["instruction"] for r in replayed}


def test_purity_is_the_majority_share_per_discovered_category() -> None:
    results = [
        {"category": "X", "true_category": "REFUND"},
        {"category": "X", "true_category": "REFUND"},
        {"category": "X", "true_category": "ORDER"},
        {"category": "Y", "true_category": "ORDER"},
        {"category": None, "true_category": "NEWSLETTER"},
    ]
    assert purity(results) == {
        "X": {"bitext_category": "REFUND", "purity": 2 / 3, "replayed": 3},
        "Y": {"bitext_category": "ORDER", "purity": 1.0, "replayed": 1},
    }
