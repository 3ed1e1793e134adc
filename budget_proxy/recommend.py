"""The model recommender: which models fit a task, ranked by how well their price level fits
the task's complexity, within a budget.

One pure function, `recommend_models`, answers `/api/assistant/recommend-model`, the MCP
`recommend_model` tool and `budget recommend` (which asks the API, or runs this over the
packaged catalog when the proxy cannot be reached), so the three cannot disagree.

The rules, stated in each option's `reason` so an operator can judge them:
- the task type is the one given, else inferred from the description (`TASK_KEYWORDS`), and
  sets the complexity (`TASK_COMPLEXITY`) and with it a target price percentile
  (`COMPLEXITY_TARGET`), moved by the priority areas (`PRIORITY_SHIFTS`);
- candidates are the chat models (embedding models for an embedding task) of the hosted
  providers (`RECOMMENDABLE_PROVIDERS`, or the one asked for) under their plain names (no
  dated snapshots), of the tier asked for, whose context window holds input plus output and
  whose output limit holds the output; a local runtime's wildcard price (ollama, vllm) is a
  candidate only when a local tier is asked for;
- a call costs what the proxy would charge for it (`usage.cost_of`, no cache discount); per
  day at `usage_frequency` calls, per month `MONTH_DAYS` days;
- an option is within budget when its call costs at most `max_cost` and its day at most
  `budget_limit`; the options within budget are ranked by closeness to the target percentile
  (then cost, then name); when none is, the cheapest are shown, flagged, and `best` is None.
"""

from __future__ import annotations

import re
from collections.abc import Iterable

from pydantic import Field

from budget_proxy.models import Tier
from budget_proxy.pricing import ModelPrice
from budget_proxy.pricing.catalog import LOCAL_PROVIDERS, WILDCARD
from budget_proxy.schemas import ModelOption, ModelRecommendation, RecommendModelRequest
from budget_proxy.usage import Usage, cost_of

MONTH_DAYS = 30  # "per month": 30 days at the given daily frequency
NUSD_PER_USD = 1_000_000_000
RECOMMENDABLE_PROVIDERS = ("openai", "anthropic", "gemini", "mistral", "deepseek", "xai")
EMBEDDING_TASKS = frozenset({"embedding", "embeddings", "embed"})
_SNAPSHOT = re.compile(r"(-\d{4}-\d{2}-\d{2}|-\d{8}|-\d{4}|-latest|-preview.*|-exp.*)$")

COMPLEXITY_TARGET = {"simple": 0.1, "standard": 0.4, "complex": 0.75}  # price percentile band
TASK_COMPLEXITY = {
    "code_generation": "complex", "coding": "complex", "analysis": "complex",
    "reasoning": "complex", "planning": "complex", "research": "complex",
    "text_generation": "standard", "chat": "standard", "writing": "standard",
    "summarization": "simple", "classification": "simple", "extraction": "simple",
    "translation": "simple", "tagging": "simple", "embedding": "simple",
    "embeddings": "simple", "embed": "simple",
}
TASK_KEYWORDS = (  # first match wins
    ("code_generation", ("code", "python", "program", "function", "sql", "debug", "refactor")),
    ("analysis", ("analy", "reason", "math", "plan", "research", "legal", "strategy")),
    ("summarization", ("summar", "digest", "tl;dr")),
    ("classification", ("classif", "categor", "sentiment", "label", "tag")),
    ("extraction", ("extract", "parse", "field")),
    ("translation", ("translat",)),
)
PRIORITY_SHIFTS = (  # words in priority_areas moving the price band
    (("cost", "cheap", "budget"), -0.15),
    (("speed", "latency", "fast"), -0.1),
    (("accura", "quality", "correct", "reliab", "error handling"), 0.15),
)


class RecommendQuery(RecommendModelRequest):
    """The recommender's question, as the API, the MCP tool and the CLI ask it."""

    tier: Tier | None = Field(None, description="Only models of this tier (a local tier "
                              "offers the local runtimes ollama and vllm).")


def infer_task_type(description: str) -> str:
    text = description.lower()
    for task_type, words in TASK_KEYWORDS:
        if any(w in text for w in words):
            return task_type
    return "text_generation"


def price_band(complexity: str, priority_areas: str | list[str] | None) -> float:
    """The target price percentile: the complexity's, moved by the priority areas."""
    text = " ".join(priority_areas) if isinstance(priority_areas, list) else (
        priority_areas or "")
    target = COMPLEXITY_TARGET[complexity]
    for words, shift in PRIORITY_SHIFTS:
        if any(w in text.lower() for w in words):
            target += shift
    return min(0.95, max(0.0, target))


def plain_name(model: str) -> bool:
    """A model's own name, not a dated snapshot, a preview or a fine-tune."""
    return not (model.startswith(("ft:", "*")) or _SNAPSHOT.search(model))


def _fits(entry: ModelPrice, q: RecommendQuery, mode: str, output_tokens: int) -> bool:
    local = q.tier is not None and q.tier.value.startswith("local")
    if entry.mode != mode or (q.tier is not None and entry.tier != q.tier):
        return False
    if q.provider is not None:
        if entry.provider != q.provider:
            return False
    elif entry.provider not in RECOMMENDABLE_PROVIDERS and not (
            local and entry.provider in LOCAL_PROVIDERS):
        return False
    if entry.model.startswith(WILDCARD):
        return local
    if not plain_name(entry.model) or entry.context_window_tokens is None:
        return False
    return (q.input_length + output_tokens <= entry.context_window_tokens
            and (entry.max_output_tokens is None or output_tokens <= entry.max_output_tokens))


def _usd(value: float) -> str:
    return f"${value:,.4f}" if value < 1 else f"${value:,.2f}"


def recommend_models(entries: Iterable[ModelPrice], q: RecommendModelRequest
                     ) -> ModelRecommendation:
    """The recommendation for ``q`` over the prices ``entries`` (see the module doc)."""
    if not isinstance(q, RecommendQuery):
        q = RecommendQuery.model_validate(q.model_dump())
    task_type = q.task_type or infer_task_type(q.task_description)
    complexity = TASK_COMPLEXITY.get(task_type.lower(), "standard")
    target = price_band(complexity, q.priority_areas)
    embedding = task_type.lower() in EMBEDDING_TASKS
    mode, output_tokens = ("embedding", 0) if embedding else ("chat", q.output_length)
    usage = Usage(input_tokens=q.input_length, output_tokens=output_tokens)
    priced = [(e, cost_of(usage, e).total_nusd) for e in entries
              if _fits(e, q, mode, output_tokens)]
    priced.sort(key=lambda pc: (pc[1], pc[0].provider, pc[0].model))
    steps = max(1, len(priced) - 1)
    options = []
    for rank, (entry, nusd) in enumerate(priced):
        cost = nusd / NUSD_PER_USD
        daily = cost * q.usage_frequency
        within = (q.max_cost is None or cost <= q.max_cost) and (
            q.budget_limit is None or daily <= q.budget_limit)
        percentile = rank / steps
        options.append(ModelOption(
            provider=entry.provider, model=entry.model, tier=entry.tier,
            input_usd_per_mtok=float(entry.input_usd_per_mtok),
            output_usd_per_mtok=float(entry.output_usd_per_mtok), cost_per_request=cost,
            daily_cost=daily, monthly_cost=daily * MONTH_DAYS, within_budget=within,
            score=round(1 - abs(percentile - target), 4),
            reason=(f"price level at the {percentile:.0%} percentile of {len(priced)} "
                    f"candidates; the band for {complexity} tasks is around {target:.0%}; "
                    f"{_usd(cost)} per request, {_usd(daily)} per day at "
                    f"{q.usage_frequency:g} requests per day"),
        ))
    fitting = [o for o in options if o.within_budget]
    pool = fitting or options[: q.limit]  # options are cheapest first
    ranked = sorted(pool, key=lambda o: (-o.score, o.cost_per_request, o.model))[: q.limit]
    return ModelRecommendation(
        task_type=task_type, complexity=complexity,  # type: ignore[arg-type]
        recommendations=ranked, best=ranked[0] if ranked and ranked[0].within_budget else None,
    )
