"""Price source adapters (LiteLLM, OpenRouter, catalog file), their configuration, fetching."""

from __future__ import annotations

import json
from decimal import Decimal
from pathlib import Path

import aiohttp
import pytest
from aiohttp import web

from budget_proxy.config import ConfigError, PriceSourceConfig, Settings, load_settings
from budget_proxy.pricing.sources import (
    LITELLM_URL,
    OPENROUTER_URL,
    PriceSource,
    Quote,
    SourceError,
    configured_sources,
    detect_format,
    from_per_mtok,
    from_per_token,
    parse,
    parse_catalog,
    parse_litellm,
    parse_openrouter,
    parse_sources_env,
    source_from_config,
)

D = Decimal

LITELLM_TABLE = {
    "sample_spec": {"litellm_provider": "one of https://docs.litellm.ai/docs/providers",
                    "input_cost_per_token": 0.0},
    "gpt-4o": {"litellm_provider": "openai", "mode": "chat", "input_cost_per_token": 2.5e-06,
               "output_cost_per_token": 1e-05, "cache_read_input_token_cost": 1.25e-06},
    "o1": {"litellm_provider": "openai", "mode": "chat", "input_cost_per_token": 1.5e-05,
           "output_cost_per_token": 6e-05, "output_cost_per_reasoning_token": 6e-05},
    "gpt-3.5-turbo-instruct": {"litellm_provider": "text-completion-openai",
                               "mode": "completion", "input_cost_per_token": 1.5e-06,
                               "output_cost_per_token": 2e-06},
    "text-embedding-3-small": {"litellm_provider": "openai", "mode": "embedding",
                               "input_cost_per_token": 2e-08},
    "claude-3-5-haiku-20241022": {
        "litellm_provider": "anthropic", "mode": "chat", "input_cost_per_token": 8e-07,
        "output_cost_per_token": 4e-06, "cache_read_input_token_cost": 8e-08,
        "cache_creation_input_token_cost": 1e-06},
    "gemini/gemini-2.5-pro": {
        "litellm_provider": "gemini", "mode": "chat", "input_cost_per_token": 1.25e-06,
        "output_cost_per_token": 1e-05, "cache_read_input_token_cost": 1.25e-07,
        "cache_creation_input_token_cost": 4.5e-06},  # hourly storage, not a write price
    "deepseek/deepseek-chat": {
        "litellm_provider": "deepseek", "mode": "chat", "input_cost_per_token": 2.7e-07,
        "output_cost_per_token": 1.1e-06, "cache_read_input_token_cost": 7e-08,
        "cache_creation_input_token_cost": 0.0},
    "groq/openai/gpt-oss-120b": {"litellm_provider": "groq", "mode": "chat",
                                 "input_cost_per_token": 1.5e-07,
                                 "output_cost_per_token": 6e-07},
    "azure/gpt-4o": {"litellm_provider": "azure", "mode": "chat",
                     "input_cost_per_token": 2.5e-06, "output_cost_per_token": 1e-05},
    "dall-e-3": {"litellm_provider": "openai", "mode": "image_generation",
                 "output_cost_per_image": 0.04},
    "tts-1": {"litellm_provider": "openai", "mode": "audio_speech",
              "input_cost_per_character": 1.5e-05},
    "whisper-1": {"litellm_provider": "openai", "mode": "audio_transcription",
                  "input_cost_per_second": 0.0001, "output_cost_per_second": 0.0001},
    "dall-e-2": {"litellm_provider": "openai", "mode": "image_generation",
                 "output_cost_per_image": -1},
    "tts-1-hd": {"litellm_provider": "openai", "input_cost_per_character": "x"},
    "whisper-2": {"litellm_provider": "openai", "input_cost_per_second": "1e400"},
}

OPENROUTER_MODELS = {"data": [
    {"id": "openai/gpt-4o", "name": "OpenAI: GPT-4o", "context_length": 128000,
     "pricing": {"prompt": "0.0000025", "completion": "0.00001", "request": "0",
                 "image": "0.003613", "web_search": "0", "internal_reasoning": "0",
                 "input_cache_read": "0.00000125"}},
    {"id": "anthropic/claude-3.5-haiku", "pricing": {
        "prompt": "0.0000008", "completion": "0.000004", "input_cache_read": "0.00000008",
        "input_cache_write": "0.000001"}},
    {"id": "google/gemini-2.5-pro", "pricing": {
        "prompt": "0.00000125", "completion": "0.00001", "input_cache_read": "0.00000031",
        "input_cache_write": "0.000001625"}},
    {"id": "x-ai/grok-3", "pricing": {"prompt": "0.000003", "completion": "0.000015"}},
    {"id": "openai/gpt-4o:extended", "pricing": {"prompt": "0.000006",
                                                 "completion": "0.000018"}},
    {"id": "openrouter/auto", "pricing": {"prompt": "-1", "completion": "-1"}},
    {"id": "meta-llama/llama-3.3-70b-instruct", "pricing": {"prompt": "0.00000013",
                                                            "completion": "0.0000004"}},
    {"id": "deepseek/deepseek-r1", "pricing": {"prompt": "-1", "completion": "0.000002"}},
]}


def by_name(quotes: list[Quote]) -> dict[str, Quote]:
    return {f"{q.provider}/{q.model}": q for q in quotes}


@pytest.mark.parametrize(("per_token", "per_mtok"), [
    (2.5e-06, "2.50"), (1e-05, "10.00"), (3e-07, "0.30"), (1.875e-06, "1.875"),
    (7.5e-08, "0.075"), (1.5e-04, "150.00"), ("0.0000025", "2.50"), ("0.00000031", "0.31"),
    (0, "0.00"), (1.1e-06, "1.10"), (2.75e-07, "0.275"),
])
def test_per_token_to_exact_per_mtok(per_token: float | str, per_mtok: str):
    value = from_per_token(per_token)
    assert value == D(per_mtok) and str(value) == per_mtok


@pytest.mark.parametrize("bad", [None, True, -1e-06, "abc", "-0.1", float("nan"), "inf"])
def test_bad_rates_are_not_prices(bad: object):
    assert from_per_token(bad) is None


def test_per_mtok_values_from_files():
    assert from_per_mtok("2.5") == D("2.50")
    # a JSON number goes through its shortest repr: 0.10, never 0.1000000000000000055...
    assert from_per_mtok(0.1) == D("0.10")
    assert from_per_mtok(3) == D("3.00")
    assert from_per_mtok(-2) is None


def test_litellm_adapter():
    quotes = by_name(parse_litellm(LITELLM_TABLE))
    assert set(quotes) == {
        "openai/gpt-4o", "openai/o1", "openai/gpt-3.5-turbo-instruct",
        "openai/text-embedding-3-small", "anthropic/claude-3-5-haiku-20241022",
        "gemini/gemini-2.5-pro", "deepseek/deepseek-chat", "groq/openai/gpt-oss-120b",
        "openai/dall-e-3", "openai/tts-1", "openai/whisper-1",
    }
    assert quotes["openai/gpt-4o"] == Quote("openai", "gpt-4o", D("2.50"), D("10.00"), D("1.25"))
    # a reasoning price equal to the output price says nothing new
    assert quotes["openai/o1"].reasoning_usd_per_mtok is None
    assert quotes["openai/text-embedding-3-small"].output_usd_per_mtok == D("0.00")
    haiku = quotes["anthropic/claude-3-5-haiku-20241022"]
    assert (haiku.cache_read_usd_per_mtok, haiku.cache_write_usd_per_mtok) == (D("0.08"),
                                                                              D("1.00"))
    # Gemini's "cache creation" is hourly storage; DeepSeek's 0 means "not listed"
    assert quotes["gemini/gemini-2.5-pro"].cache_write_usd_per_mtok is None
    assert quotes["gemini/gemini-2.5-pro"].cache_read_usd_per_mtok == D("0.125")
    assert quotes["deepseek/deepseek-chat"].cache_write_usd_per_mtok is None
    # priced by the unit: exact USD; a negative, wrong-typed or infinite price is no quote
    assert quotes["openai/dall-e-3"].usd_per_image == D("0.04")
    assert quotes["openai/dall-e-3"].input_usd_per_mtok is None
    assert quotes["openai/tts-1"].input_usd_per_char == D("0.000015")
    assert quotes["openai/whisper-1"].usd_per_second == D("0.0001")


def test_openrouter_adapter():
    quotes = by_name(parse_openrouter(OPENROUTER_MODELS))
    assert set(quotes) == {"openai/gpt-4o", "anthropic/claude-3.5-haiku",
                           "gemini/gemini-2.5-pro", "xai/grok-3"}
    gpt = quotes["openai/gpt-4o"]
    assert gpt.prices() == {"input_usd_per_mtok": D("2.50"), "output_usd_per_mtok": D("10.00"),
                            "cache_read_usd_per_mtok": D("1.25")}  # reasoning "0": not listed
    assert quotes["anthropic/claude-3.5-haiku"].cache_write_usd_per_mtok == D("1.00")
    assert quotes["gemini/gemini-2.5-pro"].cache_write_usd_per_mtok is None


def test_catalog_format_with_aliases_and_numbers():
    quotes = by_name(parse_catalog({"entries": [
        {"provider": "openai", "model": "gpt-4o", "aliases": ["gpt-4o-2024-08-06"],
         "input_usd_per_mtok": "2.50", "output_usd_per_mtok": 10,
         "cache_read_usd_per_mtok": 1.25, "cache_write_usd_per_mtok": "0"},
        {"provider": "google", "model": "gemini-2.5-flash", "input_usd_per_mtok": "0.30",
         "output_usd_per_mtok": "2.50"},
        {"provider": "openai", "model": "no-input-price", "output_usd_per_mtok": "1"},
    ]}))
    assert set(quotes) == {"openai/gpt-4o", "openai/gpt-4o-2024-08-06",
                           "gemini/gemini-2.5-flash"}
    gpt = quotes["openai/gpt-4o"]
    assert (gpt.output_usd_per_mtok, gpt.cache_read_usd_per_mtok) == (D("10.00"), D("1.25"))
    assert gpt.cache_write_usd_per_mtok is None


def test_format_detection():
    assert detect_format({"entries": []}) == "catalog"
    assert detect_format([]) == "catalog"
    assert detect_format(OPENROUTER_MODELS) == "openrouter"
    assert detect_format(LITELLM_TABLE) == "litellm"
    assert len(parse(json.dumps(OPENROUTER_MODELS).encode())) == 4


def test_zero_quotes_are_flagged_for_hosted_models_only():
    assert Quote("openai", "x", D(0), D(0)).is_zero
    assert not Quote("openai", "x", D(0), D("1")).is_zero
    assert not Quote("ollama", "llama3", D(0), D(0)).is_zero


# configuration ------------------------------------------------------------------------------
def test_sources_from_env_compact_syntax():
    configs = parse_sources_env(
        "litellm=https://example.test/prices.json, openrouter=http://127.0.0.1:9/api/v1/models"
        "|0.5,file=/etc/budget/prices.json")
    sources = [source_from_config(c) for c in configs]
    assert [(s.name, s.kind, s.format, s.trust, s.is_url) for s in sources] == [
        ("litellm", "litellm", "litellm", 0.8, True),
        ("openrouter", "openrouter", "openrouter", 0.5, True),
        ("file", "file", "auto", 1.0, False),
    ]
    assert sources[2].location == "/etc/budget/prices.json"


def test_sources_from_env_json_and_default():
    configs = parse_sources_env(json.dumps([
        {"kind": "file", "name": "ops", "path": "/srv/p.json", "format": "litellm",
         "trust": 0.9}]))
    (source,) = [source_from_config(c) for c in configs]
    assert (source.name, source.format, source.trust) == ("ops", "litellm", 0.9)
    default = [source_from_config(c) for c in parse_sources_env("default")]
    assert [s.location for s in default] == [LITELLM_URL, OPENROUTER_URL]
    assert parse_sources_env("") == parse_sources_env(None) == []


@pytest.mark.parametrize("bad", ["litellm", "nosuchkind=http://x", "file=/x|2.0"])
def test_bad_source_specs_are_refused(bad: str):
    with pytest.raises(ValueError):
        [source_from_config(c) for c in parse_sources_env(bad)]


def test_a_source_needs_a_location():
    with pytest.raises(ValueError, match="url or a path"):
        source_from_config(PriceSourceConfig(kind="litellm"))


def test_toml_tables_and_env_together(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    config = tmp_path / "budget.toml"
    config.write_text(
        '[proxy]\nprice_tolerance = 0.02\n\n'
        '[[price_sources]]\nkind = "litellm"\nurl = "https://example.test/a.json"\n\n'
        '[[price_sources]]\nkind = "litellm"\nurl = "https://example.test/b.json"\n'
        'trust = 0.6\n')
    monkeypatch.setenv("BUDGET_PRICE_SOURCES", "file=/tmp/prices.json")
    monkeypatch.setenv("PRICE_UPDATE_INTERVAL", "90")
    settings = load_settings(config)
    assert settings.price_update_interval == 90
    assert settings.price_tolerance == 0.02
    sources = configured_sources(settings)
    assert [(s.name, s.trust) for s in sources] == [("litellm", 0.8), ("litellm-2", 0.6),
                                                    ("file", 1.0)]


def test_bad_price_source_table_names_the_file(tmp_path: Path):
    config = tmp_path / "budget.toml"
    config.write_text('[[price_sources]]\nkind = "scraper"\nurl = "https://x"\n')
    with pytest.raises(ConfigError, match=r"budget\.toml: \[\[price_sources\]\]"):
        load_settings(config)


def test_interval_defaults_off_and_reads_the_seed_variable(monkeypatch: pytest.MonkeyPatch):
    assert Settings().price_update_interval == 0
    monkeypatch.setenv("PRICE_UPDATE_INTERVAL", "15")
    assert Settings().price_update_interval == 15


# fetching ---------------------------------------------------------------------------------
@pytest.fixture
async def served(aiohttp_server):
    async def litellm(request: web.Request) -> web.Response:
        return web.json_response(LITELLM_TABLE)

    async def broken(request: web.Request) -> web.Response:
        return web.Response(status=503, text="down")

    async def garbage(request: web.Request) -> web.Response:
        return web.Response(text="<html>not json</html>")

    app = web.Application()
    app.router.add_get("/litellm.json", litellm)
    app.router.add_get("/broken.json", broken)
    app.router.add_get("/garbage.json", garbage)
    server = await aiohttp_server(app)
    return str(server.make_url("")).rstrip("/")


async def test_fetch_over_http(served: str):
    source = PriceSource("litellm", "litellm", f"{served}/litellm.json", "litellm", 0.8)
    async with aiohttp.ClientSession() as session:
        quotes = await source.fetch(session)
    assert by_name(quotes)["openai/gpt-4o"].input_usd_per_mtok == D("2.50")


@pytest.mark.parametrize(("path", "message"), [
    ("/broken.json", "HTTP 503"), ("/garbage.json", "not a litellm price list"),
    ("/missing.json", "HTTP 404"),
])
async def test_fetch_failures_name_the_source(served: str, path: str, message: str):
    source = PriceSource("primary", "litellm", f"{served}{path}", "litellm", 0.8)
    async with aiohttp.ClientSession() as session:
        with pytest.raises(SourceError, match=f"primary: .*{message}"):
            await source.fetch(session)


async def test_unreachable_source():
    source = PriceSource("gone", "litellm", "http://127.0.0.1:1/x.json", "litellm", 0.8)
    async with aiohttp.ClientSession() as session:
        with pytest.raises(SourceError, match="gone: cannot fetch"):
            await source.fetch(session)


async def test_local_file_source(tmp_path: Path):
    path = tmp_path / "prices.json"
    path.write_text(json.dumps(OPENROUTER_MODELS))
    source = source_from_config(PriceSourceConfig(kind="file", path=path))
    quotes = await source.fetch(None)
    assert "xai/grok-3" in by_name(quotes)
    missing = source_from_config(PriceSourceConfig(kind="file", path=tmp_path / "nope.json"))
    with pytest.raises(SourceError, match="cannot read"):
        await missing.fetch(None)


def test_bad_env_sources_fail_when_settings_load(monkeypatch: pytest.MonkeyPatch):
    monkeypatch.setenv("BUDGET_PRICE_SOURCES", "litellm")
    with pytest.raises(ValueError, match="kind=url-or-path"):
        Settings()
