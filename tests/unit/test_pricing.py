"""Tests for the price catalog: resolution rules, real list prices, and catalog integrity."""

from __future__ import annotations

import functools
import importlib.util
import json
import sys
import tomllib
from datetime import date
from decimal import Decimal
from pathlib import Path
from types import ModuleType

import orjson
import pytest
from pydantic import ValidationError

from budget_proxy import pricing
from budget_proxy.pricing import ModelPrice, PriceCatalog, local_model_billions
from budget_proxy.pricing import catalog as catalog_module

REPO = Path(__file__).resolve().parents[2]
CATALOG_FILE = REPO / "pricing" / "catalog.json"
VALID_TIERS = {"local_lightweight", "local_midweight", "remote_heavyweight"}


@pytest.fixture(scope="module")
def catalog() -> PriceCatalog:
    return PriceCatalog.load_default()


def make(provider: str, model: str, **overrides: object) -> ModelPrice:
    fields: dict[str, object] = {
        "provider": provider,
        "model": model,
        "input_usd_per_mtok": "1.00",
        "output_usd_per_mtok": "2.00",
        "tier": "remote_heavyweight",
        "effective_date": "2025-01-01",
        "source": "test",
    }
    fields.update(overrides)
    return ModelPrice.model_validate(fields)


@pytest.mark.parametrize(
    ("provider", "requested", "expected"),
    [
        # exact names
        ("openai", "gpt-4o", "openai/gpt-4o"),
        ("anthropic", "claude-sonnet-4-5", "anthropic/claude-sonnet-4-5"),
        ("gemini", "gemini-2.5-flash", "gemini/gemini-2.5-flash"),
        ("groq", "llama-3.3-70b-versatile", "groq/llama-3.3-70b-versatile"),
        ("groq", "openai/gpt-oss-120b", "groq/openai/gpt-oss-120b"),
        # aliases and snapshots listed in the catalog
        ("openai", "gpt-4o-2024-08-06", "openai/gpt-4o"),
        ("openai", "gpt-4o-2024-11-20", "openai/gpt-4o"),
        ("openai", "gpt-4o-mini-2024-07-18", "openai/gpt-4o-mini"),
        ("openai", "gpt-4.1-2025-04-14", "openai/gpt-4.1"),
        ("openai", "o3-2025-04-16", "openai/o3"),
        ("openai", "gpt-3.5-turbo-0125", "openai/gpt-3.5-turbo"),
        ("openai", "gpt-4-0613", "openai/gpt-4"),
        ("anthropic", "claude-sonnet-4-5-20250929", "anthropic/claude-sonnet-4-5"),
        ("anthropic", "claude-3-5-sonnet-20241022", "anthropic/claude-3-5-sonnet"),
        ("anthropic", "claude-3-5-sonnet-20240620", "anthropic/claude-3-5-sonnet"),
        ("anthropic", "claude-3-5-haiku-20241022", "anthropic/claude-3-5-haiku"),
        ("anthropic", "claude-opus-4-1-20250805", "anthropic/claude-opus-4-1"),
        ("anthropic", "claude-haiku-4-5-20251001", "anthropic/claude-haiku-4-5"),
        ("anthropic", "claude-3-opus-20240229", "anthropic/claude-3-opus"),
        ("xai", "grok-4-0709", "xai/grok-4"),
        ("gemini", "gemini-1.5-pro-002", "gemini/gemini-1.5-pro"),
        # dated snapshots with their own price are not folded into the undated name
        ("openai", "gpt-4o-2024-05-13", "openai/gpt-4o-2024-05-13"),
        ("openai", "gpt-3.5-turbo-1106", "openai/gpt-3.5-turbo-1106"),
        ("mistral", "mistral-large-2411", "mistral/mistral-large-2411"),
        # unlisted snapshots fall back by stripping the date or version suffix
        ("anthropic", "claude-sonnet-4-5-20261231", "anthropic/claude-sonnet-4-5"),
        ("openai", "gpt-4.1-mini-2026-01-01", "openai/gpt-4.1-mini"),
        ("openai", "o4-mini-2099-12-31", "openai/o4-mini"),
        ("gemini", "gemini-2.0-flash-002", "gemini/gemini-2.0-flash"),
        # -latest
        ("anthropic", "claude-3-7-sonnet-latest", "anthropic/claude-3-7-sonnet"),
        ("anthropic", "claude-3-5-haiku-latest", "anthropic/claude-3-5-haiku"),
        ("openai", "gpt-4o-latest", "openai/gpt-4o"),
        ("xai", "grok-3-latest", "xai/grok-3"),
        # @version (Vertex style)
        ("anthropic", "claude-3-5-sonnet@20240620", "anthropic/claude-3-5-sonnet"),
        ("anthropic", "claude-opus-4-1@20250805", "anthropic/claude-opus-4-1"),
        # routing prefixes
        ("openai", "openai/gpt-4o", "openai/gpt-4o"),
        ("openai", "anthropic/claude-3-5-haiku-20241022", "anthropic/claude-3-5-haiku"),
        ("gemini", "models/gemini-2.5-pro", "gemini/gemini-2.5-pro"),
        ("gemini", "gemini/gemini-2.5-flash-lite", "gemini/gemini-2.5-flash-lite"),
        ("openai", "groq/openai/gpt-oss-20b", "groq/openai/gpt-oss-20b"),
        ("openrouter", "anthropic/claude-sonnet-4.5", "anthropic/claude-sonnet-4-5"),
        # provider names clients use for the same vendor
        ("google", "gemini-2.5-pro", "gemini/gemini-2.5-pro"),
        ("mistralai", "codestral-latest", "mistral/codestral-latest"),
        # OpenAI-compatible routes to other vendors: unique names resolve across providers
        ("openai", "claude-sonnet-4-5", "anthropic/claude-sonnet-4-5"),
        ("openai", "deepseek-chat", "deepseek/deepseek-chat"),
        ("openai", "grok-4", "xai/grok-4"),
        ("azure", "gpt-4o", "openai/gpt-4o"),
        ("", "gpt-4o-mini", "openai/gpt-4o-mini"),
        # case and whitespace do not matter
        ("OpenAI", " GPT-4o ", "openai/gpt-4o"),
        # fine-tunes: the fine-tuned rate of the base where listed, else the base rate
        ("openai", "ft:gpt-4o-mini-2024-07-18:acme::9abcDEF", "openai/ft:gpt-4o-mini"),
        ("openai", "ft:gpt-4o-mini:acme:custom:9abc", "openai/ft:gpt-4o-mini"),
        ("openai", "ft:gpt-4.1-2025-04-14:acme::xyz", "openai/ft:gpt-4.1"),
        ("openai", "ft:gpt-3.5-turbo-0125:acme::abc", "openai/ft:gpt-3.5-turbo"),
        ("openai", "ft:gpt-5-2025-08-07:acme::abc", "openai/gpt-5"),
        # local runtimes: zero-cost wildcard, tiered by size
        ("ollama", "llama3.2:3b", "ollama/*"),
        ("ollama", "qwen2.5:7b-instruct-q4_K_M", "ollama/*"),
        ("ollama", "llama3:8b", "ollama/*"),
        ("ollama", "nomic-embed-text", "ollama/*"),
        ("ollama", "llama3:70b", "ollama/*>8b"),
        ("ollama", "mixtral:8x7b", "ollama/*>8b"),
        ("ollama", "llama3.3", "ollama/*>8b"),
        ("ollama", "gpt-4o", "ollama/*"),
        ("vllm", "meta-llama/Llama-3.1-8B-Instruct", "vllm/*"),
        ("vllm", "Qwen/Qwen2.5-32B-Instruct", "vllm/*>8b"),
        ("hosted_vllm", "mistralai/Mistral-7B-Instruct-v0.3", "vllm/*"),
        ("openai", "ollama/llama3.1:70b", "ollama/*>8b"),
        ("openai", "vllm/microsoft/phi-4", "vllm/*"),
    ],
)
def test_lookup_resolves(catalog: PriceCatalog, provider: str, requested: str, expected: str):
    found = catalog.lookup(provider, requested)
    assert found is not None, f"{provider}:{requested} did not resolve"
    assert f"{found.provider}/{found.model}" == expected


@pytest.mark.parametrize(
    ("provider", "requested"),
    [
        ("openai", "gpt-9-ultra"),
        ("openai", ""),
        ("openai", "   "),
        ("anthropic", "claude-2-fictional"),
        ("openai", "ft:davinci-002:acme::abc"),
        ("openai", "ft:"),
        ("openai", "gpt-4o-audio-preview"),
        ("openai", "gpt-4o-realtime-preview-2024-12-17"),
        ("openai", "gpt-4o-search-preview"),
        ("gemini", "gemini-exp-1206"),
        ("openai", "some-org/some-model"),
        ("openai", "models"),
    ],
)
def test_lookup_unknown_is_none(catalog: PriceCatalog, provider: str, requested: str):
    assert catalog.lookup(provider, requested) is None


# Official list prices, typed by hand from the providers' pricing pages (USD per 1M tokens):
# input, output, cached input (read), cache write.
LIST_PRICES = [
    ("openai", "gpt-4o", "2.50", "10.00", "1.25", None),
    ("openai", "gpt-4o-mini", "0.15", "0.60", "0.075", None),
    ("openai", "gpt-4.1", "2.00", "8.00", "0.50", None),
    ("openai", "gpt-4.1-mini", "0.40", "1.60", "0.10", None),
    ("openai", "gpt-4.1-nano", "0.10", "0.40", "0.025", None),
    ("openai", "gpt-5", "1.25", "10.00", "0.125", None),
    ("openai", "gpt-5-mini", "0.25", "2.00", "0.025", None),
    ("openai", "gpt-5-nano", "0.05", "0.40", "0.005", None),
    ("openai", "o1", "15.00", "60.00", "7.50", None),
    ("openai", "o3", "2.00", "8.00", "0.50", None),
    ("openai", "o3-mini", "1.10", "4.40", "0.55", None),
    ("openai", "o4-mini", "1.10", "4.40", "0.275", None),
    ("openai", "gpt-4-turbo", "10.00", "30.00", None, None),
    ("openai", "gpt-4", "30.00", "60.00", None, None),
    ("openai", "gpt-3.5-turbo", "0.50", "1.50", None, None),
    ("openai", "text-embedding-3-small", "0.02", "0", None, None),
    ("openai", "text-embedding-3-large", "0.13", "0", None, None),
    ("openai", "text-embedding-ada-002", "0.10", "0", None, None),
    ("anthropic", "claude-opus-4-1", "15.00", "75.00", "1.50", "18.75"),
    ("anthropic", "claude-opus-4", "15.00", "75.00", "1.50", "18.75"),
    ("anthropic", "claude-sonnet-4-5", "3.00", "15.00", "0.30", "3.75"),
    ("anthropic", "claude-sonnet-4", "3.00", "15.00", "0.30", "3.75"),
    ("anthropic", "claude-3-7-sonnet", "3.00", "15.00", "0.30", "3.75"),
    ("anthropic", "claude-3-5-sonnet", "3.00", "15.00", "0.30", "3.75"),
    ("anthropic", "claude-3-5-haiku", "0.80", "4.00", "0.08", "1.00"),
    ("anthropic", "claude-haiku-4-5", "1.00", "5.00", "0.10", "1.25"),
    ("anthropic", "claude-opus-4-5", "5.00", "25.00", "0.50", "6.25"),
    ("anthropic", "claude-3-opus", "15.00", "75.00", "1.50", "18.75"),
    ("anthropic", "claude-3-haiku", "0.25", "1.25", "0.03", "0.30"),
    ("gemini", "gemini-2.5-pro", "1.25", "10.00", "0.125", None),
    ("gemini", "gemini-2.5-flash", "0.30", "2.50", "0.03", None),
    ("gemini", "gemini-2.5-flash-lite", "0.10", "0.40", "0.01", None),
    ("gemini", "gemini-2.0-flash", "0.10", "0.40", "0.025", None),
    ("gemini", "gemini-1.5-pro", "1.25", "5.00", "0.3125", None),
    ("gemini", "gemini-1.5-flash", "0.075", "0.30", "0.01875", None),
    ("deepseek", "deepseek-chat", "0.28", "0.42", "0.028", None),
    ("xai", "grok-4", "3.00", "15.00", "0.75", None),
    ("groq", "llama-3.3-70b-versatile", "0.59", "0.79", None, None),
    ("groq", "llama-3.1-8b-instant", "0.05", "0.08", None, None),
    ("openai", "ft:gpt-4o-mini", "0.30", "1.20", "0.15", None),
]


@pytest.mark.parametrize(
    ("provider", "model", "inp", "out", "cache_read", "cache_write"), LIST_PRICES
)
def test_list_prices(
    catalog: PriceCatalog,
    provider: str,
    model: str,
    inp: str,
    out: str,
    cache_read: str | None,
    cache_write: str | None,
):
    entry = catalog.lookup(provider, model)
    assert entry is not None
    assert (entry.provider, entry.model) == (provider, model)
    assert entry.input_usd_per_mtok == Decimal(inp)
    assert entry.output_usd_per_mtok == Decimal(out)
    assert entry.cache_read_usd_per_mtok == (None if cache_read is None else Decimal(cache_read))
    assert entry.cache_write_usd_per_mtok == (None if cache_write is None else Decimal(cache_write))


@pytest.mark.parametrize(
    "model",
    [
        "claude-opus-4-1",
        "claude-opus-4",
        "claude-sonnet-4-5",
        "claude-sonnet-4",
        "claude-3-7-sonnet",
        "claude-3-5-sonnet",
        "claude-3-5-haiku",
        "claude-haiku-4-5",
        "claude-3-opus",
    ],
)
def test_anthropic_cache_multipliers(catalog: PriceCatalog, model: str):
    """5-minute cache writes cost 1.25x input and cache reads 0.1x input."""
    entry = catalog.lookup("anthropic", model)
    assert entry is not None
    assert entry.cache_write_usd_per_mtok == entry.input_usd_per_mtok * Decimal("1.25")
    assert entry.cache_read_usd_per_mtok == entry.input_usd_per_mtok * Decimal("0.1")


def test_every_entry_is_well_formed(catalog: PriceCatalog):
    entries = catalog.entries()
    assert 50 < len(entries) <= 400
    for entry in entries:
        assert entry.tier in VALID_TIERS
        assert entry.source.strip()
        assert entry.output_usd_per_mtok >= 0
        for name in (*pricing.PRICE_FIELDS, *pricing.UNIT_PRICE_FIELDS):
            value = getattr(entry, name)
            assert value is None or (value.is_finite() and value >= 0), (entry.model, name)
        assert all(v.is_finite() and v > 0 for v in entry.usd_per_image_by_size.values())
        if entry.provider in pricing.LOCAL_PROVIDERS:
            assert entry.tier != "remote_heavyweight"
            assert entry.input_usd_per_mtok == entry.output_usd_per_mtok == 0
        else:
            assert entry.tier == "remote_heavyweight"
            priced_by_unit = entry.price_type != "token"
            assert entry.input_usd_per_mtok + entry.output_usd_per_mtok > 0 or priced_by_unit, (
                entry.model)
        assert entry.effective_date <= date(2026, 12, 31)


def test_expected_providers_present(catalog: PriceCatalog):
    providers = {e.provider for e in catalog.entries()}
    wanted = {"openai", "anthropic", "gemini", "mistral", "deepseek", "xai", "groq"}
    assert providers >= wanted | set(pricing.LOCAL_PROVIDERS)


def test_local_wildcards_are_zero_cost_and_tiered(catalog: PriceCatalog):
    for provider in pricing.LOCAL_PROVIDERS:
        small = catalog.lookup(provider, "tiny-model:1b")
        big = catalog.lookup(provider, "big-model:70b")
        assert small is not None and small.tier == "local_lightweight"
        assert big is not None and big.tier == "local_midweight"
        for entry in (small, big):
            assert entry.input_usd_per_mtok == entry.output_usd_per_mtok == 0


def test_catalog_file_format():
    """Prices are strings in the file (never floats), entries sorted, one per line."""
    text = CATALOG_FILE.read_text(encoding="utf-8")
    data = json.loads(text)
    entries = data["entries"]
    assert data["litellm_version"]
    keys = [(e["provider"], e["model"]) for e in entries]
    assert keys == sorted(keys)
    assert len(set(keys)) == len(keys)
    for entry in entries:
        for name in pricing.PRICE_FIELDS:
            assert entry[name] is None or isinstance(entry[name], str), (entry["model"], name)
        assert set(entry) == set(ModelPrice.model_fields)
    assert sum(1 for line in text.splitlines() if line.lstrip().startswith('{"provider"')) == len(
        entries
    )


def test_loads_from_source_checkout(monkeypatch: pytest.MonkeyPatch, tmp_path: Path):
    monkeypatch.setattr(catalog_module, "_packaged_catalog", lambda: tmp_path / "missing.json")
    assert pricing.default_catalog_path() == pricing.SOURCE_CATALOG_PATH
    assert pricing.SOURCE_CATALOG_PATH == CATALOG_FILE
    loaded = PriceCatalog.load_default()
    assert loaded.lookup("openai", "gpt-4o") is not None


def test_loads_from_packaged_path(monkeypatch: pytest.MonkeyPatch, tmp_path: Path):
    packaged = tmp_path / "_pricing" / "catalog.json"
    packaged.parent.mkdir()
    only_one = json.loads(CATALOG_FILE.read_text(encoding="utf-8"))
    only_one["entries"] = [e for e in only_one["entries"] if e["model"] == "gpt-4o"]
    packaged.write_text(json.dumps(only_one), encoding="utf-8")
    monkeypatch.setattr(catalog_module, "_packaged_catalog", lambda: packaged)
    loaded = PriceCatalog.load_default()
    assert [e.model for e in loaded.entries()] == ["gpt-4o"]


def test_packaged_path_matches_wheel_layout():
    """The loader's packaged path is where pyproject force-includes pricing/."""
    pyproject = tomllib.loads((REPO / "pyproject.toml").read_text(encoding="utf-8"))
    force_include = pyproject["tool"]["hatch"]["build"]["targets"]["wheel"]["force-include"]
    assert force_include["pricing"] == "budget_proxy/_pricing"
    assert str(catalog_module._packaged_catalog()).endswith("budget_proxy/_pricing/catalog.json")


def test_model_price_is_frozen_and_exact():
    entry = make("openai", "m", input_usd_per_mtok="0.1", output_usd_per_mtok="0.2")
    assert entry.input_usd_per_mtok + entry.output_usd_per_mtok == Decimal("0.3")
    with pytest.raises(ValidationError):
        entry.model = "other"  # type: ignore[misc]
    assert hash(entry) == hash(
        make("openai", "m", input_usd_per_mtok="0.1", output_usd_per_mtok="0.2")
    )


@pytest.mark.parametrize(
    "bad",
    [
        {"input_usd_per_mtok": 2.5},
        {"output_usd_per_mtok": "-1"},
        {"cache_read_usd_per_mtok": "NaN"},
        {"input_usd_per_mtok": None},
        {"tier": "remote_lightweight"},
        {"source": ""},
        {"unexpected": "field"},
    ],
)
def test_model_price_rejects_bad_values(bad: dict[str, object]):
    with pytest.raises(ValidationError):
        make("openai", "m", **bad)


def test_pricing_id_and_rate_fallbacks():
    entry = make("anthropic", "claude-x", effective_date=date(2025, 9, 29))
    assert entry.pricing_id == "anthropic/claude-x@2025-09-29"
    assert entry.cache_read_rate == entry.cache_write_rate == Decimal("1.00")
    assert entry.reasoning_rate == Decimal("2.00")
    priced = make(
        "anthropic",
        "claude-y",
        cache_read_usd_per_mtok="0.10",
        cache_write_usd_per_mtok="1.25",
        reasoning_usd_per_mtok="3.00",
    )
    assert (priced.cache_read_rate, priced.cache_write_rate, priced.reasoning_rate) == (
        Decimal("0.10"),
        Decimal("1.25"),
        Decimal("3.00"),
    )


def test_same_provider_preferred_over_other_providers():
    openai_entry = make("openai", "shared-model")
    groq_entry = make("groq", "shared-model", input_usd_per_mtok="0.10")
    custom = PriceCatalog.from_entries([groq_entry, openai_entry])
    assert custom.lookup("groq", "shared-model") == groq_entry
    assert custom.lookup("openai", "shared-model") == openai_entry
    # Neither provider asked: the first-party vendor wins over the host.
    assert custom.lookup("azure", "shared-model") == openai_entry


def test_duplicate_names_within_a_provider_are_rejected():
    with pytest.raises(ValueError, match="claimed"):
        PriceCatalog.from_entries([make("openai", "a", aliases=["b"]), make("openai", "b")])


def test_from_entries_without_local_wildcard_does_not_invent_zero_cost():
    custom = PriceCatalog.from_entries([make("openai", "gpt-4o")])
    assert custom.lookup("ollama", "llama3:8b") is None
    assert custom.lookup("openai", "gpt-4o-2024-08-06") is not None


def test_lookup_is_cached_and_stable(catalog: PriceCatalog):
    first = catalog.lookup("openai", "gpt-4o-2024-08-06")
    assert first is catalog.lookup("openai", "gpt-4o-2024-08-06")


@pytest.mark.parametrize(
    ("name", "billions"),
    [
        ("llama3:8b", "8"),
        ("llama3:70b-instruct-q4_0", "70"),
        ("mixtral:8x7b", "56"),
        ("qwen3:30b-a3b", "30"),
        ("phi3:3.8b", "3.8"),
        ("gemma3:270m", "0.27"),
        ("gemma3n:e4b", "4"),
        ("meta-llama/Llama-3.1-405B-Instruct", "405"),
        ("hf.co/bartowski/Llama-3.3-70B-Instruct-GGUF:Q4_K_M", "70"),
        ("llama3.3", "70"),
        ("phi4:latest", "14"),
        ("llama3", None),
        ("nomic-embed-text:v1.5", None),
    ],
)
def test_local_model_billions(name: str, billions: str | None):
    expected = None if billions is None else Decimal(billions)
    assert local_model_billions(name) == expected


@functools.cache
def _load_builder() -> ModuleType:
    """Import pricing/build_catalog.py, which is a script rather than a package module."""
    name = "budget_proxy_build_catalog"
    spec = importlib.util.spec_from_file_location(name, REPO / "pricing" / "build_catalog.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    spec.loader.exec_module(module)
    return module


@pytest.mark.parametrize(
    ("per_token", "expected"),
    [
        (2.5e-06, "2.50"),
        (1e-05, "10.00"),
        (7.5e-08, "0.075"),
        (1.4999999999999999e-07, "0.15"),
        (3.75e-08, "0.0375"),
        (1.875e-06, "1.875"),
        (0.0, "0.00"),
        (None, None),
    ],
)
def test_builder_converts_float_per_token_to_exact_strings(per_token, expected):
    assert _load_builder().usd_per_mtok(per_token) == expected


@pytest.mark.parametrize(
    ("name", "base"),
    [
        ("gpt-4o-2024-08-06", "gpt-4o"),
        ("claude-sonnet-4-5-20250929", "claude-sonnet-4-5"),
        ("claude-3-5-haiku-latest", "claude-3-5-haiku"),
        ("gpt-3.5-turbo-0125", "gpt-3.5-turbo"),
        ("mistral-large-2411", "mistral-large"),
        ("gemini-1.5-pro-002", "gemini-1.5-pro"),
        ("gpt-4-1106-preview", "gpt-4-1106-preview"),
        ("text-embedding-3-small", "text-embedding-3-small"),
    ],
)
def test_builder_base_names(name: str, base: str):
    assert _load_builder().base_name(name) == base


def _litellm_record(provider: str, inp: float, out: float, **extra: object) -> dict[str, object]:
    record: dict[str, object] = {
        "litellm_provider": provider,
        "mode": "chat",
        "input_cost_per_token": inp,
        "output_cost_per_token": out,
        "max_input_tokens": 128000,
        "max_output_tokens": 16384,
    }
    record.update(extra)
    return record


def test_builder_folds_snapshots_and_applies_conventions():
    builder = _load_builder()
    current = {
        "sample_spec": {"litellm_provider": "one of ..."},
        "gpt-4o": _litellm_record("openai", 2.5e-06, 1e-05, cache_read_input_token_cost=1.25e-06),
        "gpt-4o-2024-08-06": _litellm_record(
            "openai", 2.5e-06, 1e-05, cache_read_input_token_cost=1.25e-06
        ),
        "gpt-4o-2024-05-13": _litellm_record("openai", 5e-06, 1.5e-05),
        "gpt-4o-audio-preview": _litellm_record("openai", 2.5e-06, 1e-05),
        "claude-sonnet-4-5-20250929": _litellm_record(
            "anthropic",
            3e-06,
            1.5e-05,
            cache_read_input_token_cost=3e-07,
            cache_creation_input_token_cost=3.75e-06,
        ),
        "deepseek/deepseek-chat": _litellm_record(
            "deepseek", 2.8e-07, 4.2e-07, cache_creation_input_token_cost=0.0
        ),
        "gemini/gemini-free-exp": _litellm_record("gemini", 0.0, 0.0),
        "text-embedding-3-small": _litellm_record(
            "openai", 2e-08, 0.0, mode="embedding", max_output_tokens=None
        ),
        "azure/gpt-4o": _litellm_record("azure", 2.5e-06, 1e-05),
    }
    fallback = {
        "claude-3-opus-20240229": _litellm_record("anthropic", 1.5e-05, 7.5e-05),
        "gpt-4o-2024-05-13": _litellm_record("openai", 5e-06, 1.5e-05),
    }
    entries = {(e["provider"], e["model"]): e for e in builder.build(current, fallback)}

    gpt_4o = entries[("openai", "gpt-4o")]
    assert gpt_4o["aliases"] == ["gpt-4o-2024-08-06"]
    assert (gpt_4o["input_usd_per_mtok"], gpt_4o["cache_read_usd_per_mtok"]) == ("2.50", "1.25")
    assert gpt_4o["effective_date"] == "2024-08-06"
    assert (
        gpt_4o["source"]
        == f"litellm:model_prices_and_context_window.json@{builder.LITELLM_VERSION}"
    )
    assert entries[("openai", "gpt-4o-2024-05-13")]["input_usd_per_mtok"] == "5.00"
    sonnet = entries[("anthropic", "claude-sonnet-4-5")]
    assert sonnet["aliases"] == ["claude-sonnet-4-5-20250929"]
    assert sonnet["cache_write_usd_per_mtok"] == "3.75"
    assert entries[("deepseek", "deepseek-chat")]["cache_write_usd_per_mtok"] is None
    assert entries[("openai", "text-embedding-3-small")]["mode"] == "embedding"
    opus = entries[("anthropic", "claude-3-opus")]
    assert opus["source"].endswith(f"@{builder.FALLBACK_LITELLM_VERSION}")
    assert ("openai", "gpt-4o-audio-preview") not in entries
    assert not any(p == "gemini" for p, _ in entries)
    assert not any(p == "azure" for p, _ in entries)
    assert {m for p, m in entries if p == "ollama"} == {"*", "*>8b"}
    for entry in entries.values():
        ModelPrice.model_validate(entry)


# the seed's price types ---------------------------------------------------------------------
@pytest.mark.parametrize(
    ("model", "price_type", "seed"),
    [
        ("dall-e-3", "image", {"cost_per_image": 0.04, "usd_per_image": "0.040"}),
        ("tts-1", "character", {"input_cost_per_char": 0.000015,
                                "input_usd_per_char": "0.000015"}),
        ("whisper-1", "time", {"cost_per_second": 0.0001, "usd_per_second": "0.0001"}),
        ("gpt-image-1", "token", {"cost_per_image": 0.0, "usd_per_image": None,
                                  "output_usd_per_mtok": "40.00"}),
        ("gpt-4o", "token", {"fixed_cost_per_request": 0.0, "usd_per_request": None}),
    ],
)
def test_price_views_show_every_price_type(model, price_type, seed):
    book = pricing.PriceBook(PriceCatalog.load_default().entries())
    (view,) = book.current_prices(provider="openai", model=model)
    assert view["price_type"] == price_type
    assert {k: view[k] for k in seed} == seed
    if model == "dall-e-3":
        assert view["usd_per_image_by_size"]["hd/1792x1024"] == "0.120"


def test_a_price_version_of_any_type_round_trips_and_old_documents_read():
    version = pricing.PriceVersion(
        pricing_id="openai/whisper-1#v1", seq=1, provider="openai", model="whisper-1",
        input_usd_per_mtok="0", output_usd_per_mtok="0", usd_per_second="0.00012",
        usd_per_image_by_size={"1024x1024": "0.05"}, effective_date="2026-01-01T00:00:00Z",
        source="manual", created_at="2026-01-01T00:00:00Z")
    again = pricing.PriceVersion.model_validate_json(version.model_dump_json())
    assert again == version and again.price_type == "image"
    assert again.to_price().usd_per_second == Decimal("0.00012")
    old = orjson.loads(version.model_dump_json())
    old["price_type"] = "token"  # written before every price type existed
    for key in (*pricing.UNIT_PRICE_FIELDS, "usd_per_image_by_size"):
        old.pop(key)
    assert pricing.PriceVersion.model_validate(old).price_type == "token"


@pytest.mark.parametrize(
    "fields",
    [
        {"usd_per_second": 0.1},  # a float
        {"usd_per_image": "-1"},
        {"usd_per_image_by_size": {"1024x1024": 0.5}},
        {"usd_per_image_by_size": {"1024x1024": "-0.5"}},
        {"usd_per_image_by_size": ["0.5"]},
        {"input_usd_per_char": "abc"},
        {"usd_per_request": True},
    ],
)
def test_unit_prices_are_exact_and_not_negative(fields):
    with pytest.raises(ValidationError):
        pricing.PriceFields(input_usd_per_mtok="0", output_usd_per_mtok="0", **fields)
