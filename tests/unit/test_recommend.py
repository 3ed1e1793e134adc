"""`budget_proxy.recommend`: the one model recommender, over the packaged catalog, no I/O."""

from __future__ import annotations

from typing import Any

import pytest

from budget_proxy.pricing import ModelPrice, PriceCatalog
from budget_proxy.recommend import (
    RECOMMENDABLE_PROVIDERS,
    RecommendQuery,
    infer_task_type,
    price_band,
    recommend_models,
)
from budget_proxy.schemas import RecommendModelRequest

CATALOG = PriceCatalog.load_default()
BY_NAME = {(e.provider, e.model): e for e in CATALOG}


def entry(option: Any) -> ModelPrice:
    return BY_NAME[(option.provider, option.model)]


@pytest.mark.parametrize(("description", "task_type"), [
    ("Generate Python code for data processing", "code_generation"),
    ("Summarise support tickets", "summarization"),
    ("Classify the sentiment of reviews", "classification"),
    ("Translate the manual to French", "translation"),
    ("Plan a research strategy", "analysis"),
    ("", "text_generation"),
])
def test_task_type_inferred_from_the_description(description, task_type):
    assert infer_task_type(description) == task_type


@pytest.mark.parametrize(("complexity", "priorities", "band"), [
    ("simple", None, 0.1), ("standard", None, 0.4), ("complex", None, 0.75),
    ("complex", "accuracy", 0.9), ("standard", ["cost", "speed"], 0.15),
    ("simple", "cheap", 0.0), ("complex", "quality and error handling", 0.9),
])
def test_price_band(complexity, priorities, band):
    assert price_band(complexity, priorities) == pytest.approx(band)


@pytest.mark.parametrize(("query", "fits"), [
    ({"input_length": 150_000, "output_length": 1000, "tier": "remote_heavyweight",
      "limit": 50},
     lambda o, e: e.context_window_tokens >= 151_000 and e.tier == "remote_heavyweight"),
    ({"provider": "anthropic", "limit": 50}, lambda o, e: o.provider == "anthropic"),
    ({"limit": 50}, lambda o, e: o.provider in RECOMMENDABLE_PROVIDERS and e.mode == "chat"),
    ({"task_type": "embedding", "limit": 50}, lambda o, e: e.mode == "embedding"),
    ({"task_type": "summarization", "max_cost": 0.0002, "limit": 50},
     lambda o, e: o.within_budget and o.cost_per_request <= 0.0002),
    ({"usage_frequency": 100, "budget_limit": 0.05, "limit": 50},
     lambda o, e: o.daily_cost <= 0.05 and o.within_budget),
])
def test_every_option_fits_the_query(query, fits):
    answer = recommend_models(CATALOG, RecommendQuery(**query))
    assert answer.recommendations
    for option in answer.recommendations:
        assert fits(option, entry(option)), option
        assert "-2024-" not in option.model  # plain names, no dated snapshots


@pytest.mark.parametrize(("tier", "models"), [
    ("local_midweight", {("ollama", "*>8b"), ("vllm", "*>8b")}),
    ("local_lightweight", {("ollama", "*"), ("vllm", "*")}),
])
def test_local_tiers_offer_the_local_runtimes(tier, models):
    answer = recommend_models(CATALOG, RecommendQuery(tier=tier))
    assert {(o.provider, o.model) for o in answer.recommendations} == models


def test_cost_per_call_day_and_month_by_hand():
    answer = recommend_models(CATALOG, RecommendQuery(input_length=2000, output_length=300,
                                                      usage_frequency=40, limit=50))
    for option in answer.recommendations:
        price = entry(option)
        by_hand = float(2000 * price.input_usd_per_mtok + 300 * price.output_usd_per_mtok) / 1e6
        assert option.cost_per_request == pytest.approx(by_hand, abs=1e-9)
        assert option.daily_cost == pytest.approx(by_hand * 40, abs=1e-9)
        assert option.monthly_cost == pytest.approx(by_hand * 40 * 30, abs=1e-9)


@pytest.mark.parametrize(("task_type", "complexity"), [
    ("summarization", "simple"), ("text_generation", "standard"), ("reasoning", "complex"),
    ("something-new", "standard"),
])
def test_ranked_by_closeness_to_the_band(task_type, complexity):
    answer = recommend_models(CATALOG, RecommendQuery(task_type=task_type))
    assert answer.complexity == complexity
    scores = [o.score for o in answer.recommendations]
    assert scores == sorted(scores, reverse=True) and answer.best == answer.recommendations[0]


def test_a_dearer_complexity_recommends_a_dearer_model():
    simple = recommend_models(CATALOG, RecommendQuery(task_type="summarization")).best
    hard = recommend_models(CATALOG, RecommendQuery(task_type="reasoning")).best
    assert simple is not None and hard is not None
    assert simple.cost_per_request < hard.cost_per_request


def test_nothing_within_budget_shows_the_cheapest_flagged():
    answer = recommend_models(CATALOG, RecommendQuery(max_cost=0, limit=3))
    assert answer.best is None and len(answer.recommendations) == 3
    assert not any(o.within_budget for o in answer.recommendations)
    cheapest = sorted(o.cost_per_request for o in recommend_models(
        CATALOG, RecommendQuery(limit=50)).recommendations)
    assert max(o.cost_per_request for o in answer.recommendations) <= cheapest[2] + 1e-12


def test_nothing_fits_the_context():
    answer = recommend_models(CATALOG, RecommendQuery(input_length=5_000_000))
    assert answer.recommendations == [] and answer.best is None


def test_the_api_request_without_a_tier_is_answered_alike():
    plain = RecommendModelRequest(task_type="summarization", provider="openai")
    assert recommend_models(CATALOG, plain) == recommend_models(
        CATALOG, RecommendQuery(task_type="summarization", provider="openai"))
