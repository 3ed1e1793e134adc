#!/usr/bin/env python3
"""Regenerate ``pricing/catalog.json`` from LiteLLM's model price table.

LiteLLM ships ``model_prices_and_context_window_backup.json`` inside its wheel. This script
reads that file straight out of the wheel zip (litellm is never installed or imported), keeps
the token-priced chat/embedding models of the providers the proxy supports, folds dated
snapshots and ``-latest`` pointers into one entry per price, applies the hand-maintained
corrections below, and writes one JSON entry per line so diffs stay reviewable.

Models that LiteLLM has since dropped (retired snapshots that clients still send) come from an
older pinned LiteLLM release; each entry records which release its numbers came from.

Usage::

    python pricing/build_catalog.py                       # pip-downloads the pinned wheels
    python pricing/build_catalog.py --wheel-dir /tmp/ll   # use wheels already downloaded
    python pricing/build_catalog.py --check               # exit 1 if catalog.json is stale
"""

from __future__ import annotations

import argparse
import json
import re
import subprocess
import sys
import tempfile
import zipfile
from collections import defaultdict
from dataclasses import dataclass, field
from decimal import Decimal
from pathlib import Path
from typing import Any

LITELLM_VERSION = "1.109.1"
FALLBACK_LITELLM_VERSION = "1.78.5"
AS_OF = "2026-11-22"
# Lower bound of the fallback release date: it already lists claude-haiku-4-5 (2025-10-15).
FALLBACK_AS_OF = "2025-10-15"
PRICE_FILE = "litellm/model_prices_and_context_window_backup.json"
SOURCE_NAME = "model_prices_and_context_window.json"
MANUAL_SOURCE = "manual:pricing/build_catalog.py"

CATALOG_PATH = Path(__file__).resolve().parent / "catalog.json"

PROVIDERS = ("openai", "anthropic", "gemini", "mistral", "deepseek", "xai", "groq")
MODES = frozenset({"chat", "completion", "embedding", "responses"})

# Models whose bill is not (only) text tokens: audio/realtime/image tokens, per-search fees,
# tool sessions. Token prices alone would under-count them, so they stay out and fall to the
# caller's unknown-price rule.
EXCLUDE_PATTERNS = [
    r"audio",
    r"realtime",
    r"tts",
    r"transcribe",
    r"image",
    r"(^|-)search(-|$)",
    r"deep-research",
    r"computer-use",
    r"^container$",
    r"moderation",
    r"lyria",
    r"robotics",
    r"learnlm",
    r"-live-",
    r"-exp(-|$)",
    r"^gemini-exp-",
    r"gemma",
    r"llama-guard",
    r"prompt-guard",
    r"-vision-beta$",
    r"^grok-beta$",
    r"customtools",
    r"cyber",
    r"^ft:gpt-4-0613$",
    r"-specdec$",
    r"tool-use-preview",
    r"-text-preview$",
    r"-vision-preview$",
    r"^gemini-2\.5-pro-preview-",
    r"^gemini-2\.5-flash-preview-",
    r"^gemini-2\.5-flash-lite-preview-",
    r"^gemini-2\.0-flash-lite-preview-",
    r"^gemini-2\.0-flash-thinking",
    r"^gemini-pro(-vision)?$",
    r"-gv2$",
    r"^mistral-vibe-",
    r"^labs-",
    r"^llama2-70b-4096$",
    r"^llama-3\.1-405b-reasoning$",
    r"^llama-3\.1-70b-versatile$",
    r"^gemma-7b-it$",
    r"^mixtral-8x7b-32768$",
    r"^llama-3\.2-\d+b-preview$",
]
_EXCLUDE = [re.compile(p) for p in EXCLUDE_PATTERNS]

# Corrections applied to LiteLLM records (keyed by provider and LiteLLM name without the
# provider prefix), in USD per million tokens. Each one is explained in pricing/README.md.
OVERRIDES: dict[tuple[str, str], dict[str, str | None]] = {
    # Anthropic lists Claude 3.5 Haiku at $0.80/$4; LiteLLM's -latest pointer kept the
    # launch price.
    ("anthropic", "claude-3-5-haiku-latest"): {
        "input": "0.80",
        "output": "4.00",
        "cache_read": "0.08",
        "cache_write": "1.00",
    },
    # OpenAI's o1-mini price cut applied to the dated snapshot as well.
    ("openai", "o1-mini-2024-09-12"): {"input": "1.10", "output": "4.40", "cache_read": "0.55"},
    # LiteLLM filed the cached-input price of this fine-tune under cache creation.
    ("openai", "ft:gpt-4o-2024-11-20"): {"cache_read": "1.875", "cache_write": None},
    # Gemini 1.5 prices after Google's 2024 price cuts (prompts <= 128k tokens).
    **{
        ("gemini", name): {"input": "1.25", "output": "5.00", "cache_read": "0.3125"}
        for name in (
            "gemini-1.5-pro",
            "gemini-1.5-pro-001",
            "gemini-1.5-pro-002",
            "gemini-1.5-pro-latest",
        )
    },
    **{
        ("gemini", name): {"input": "0.075", "output": "0.30", "cache_read": "0.01875"}
        for name in (
            "gemini-1.5-flash",
            "gemini-1.5-flash-001",
            "gemini-1.5-flash-002",
            "gemini-1.5-flash-latest",
        )
    },
    ("gemini", "gemini-1.5-flash-8b"): {"input": "0.0375", "output": "0.15", "cache_read": "0.01"},
    # xAI lists cached input for Grok 3 / Grok 4 that LiteLLM's older records lack.
    **{
        ("xai", name): {"cache_read": "0.75"}
        for name in (
            "grok-4",
            "grok-4-0709",
            "grok-4-latest",
            "grok-3",
            "grok-3-latest",
            "grok-3-beta",
        )
    },
    **{
        ("xai", name): {"cache_read": "0.075"}
        for name in ("grok-3-mini", "grok-3-mini-latest", "grok-3-mini-beta")
    },
}

# LiteLLM keys that are spelled differently from the provider's own model IDs.
RENAMES: dict[tuple[str, str], str] = {
    ("anthropic", "claude-4-opus-20250514"): "claude-opus-4-20250514",
    ("anthropic", "claude-4-sonnet-20250514"): "claude-sonnet-4-20250514",
}

# Extra names that clients send for an entry (provider, canonical model) -> aliases.
EXTRA_ALIASES: dict[tuple[str, str], list[str]] = {
    ("anthropic", "claude-opus-4"): ["claude-4-opus", "claude-opus-4-0"],
    ("anthropic", "claude-sonnet-4"): ["claude-4-sonnet", "claude-sonnet-4-0"],
    ("anthropic", "claude-3-7-sonnet"): ["claude-3.7-sonnet"],
    ("anthropic", "claude-3-5-sonnet"): ["claude-3.5-sonnet"],
    ("anthropic", "claude-3-5-haiku"): ["claude-3.5-haiku"],
    ("mistral", "mistral-medium-2505"): ["mistral-medium-2508"],
}

# Undated names that would be too generic to alias to their -latest pointer.
NO_BASE_ALIAS = {("openai", "chat")}

# Dates on which the listed price is known to have been in force, where neither the snapshot
# date nor the capture date says it best (later price cuts, GA dates).
EFFECTIVE_DATES: dict[tuple[str, str], str] = {
    ("openai", "o3"): "2025-06-10",
    ("openai", "o1-mini"): "2025-01-31",
    ("anthropic", "claude-3-5-haiku"): "2025-01-01",
    ("openai", "gpt-3.5-turbo"): "2024-01-25",
    ("openai", "gpt-4"): "2023-03-14",
    ("openai", "gpt-4-32k"): "2023-03-14",
    ("openai", "text-embedding-3-small"): "2024-01-25",
    ("openai", "text-embedding-3-large"): "2024-01-25",
    ("openai", "text-embedding-ada-002"): "2023-06-13",
    ("xai", "grok-4"): "2025-07-09",
    ("deepseek", "deepseek-chat"): "2025-09-29",
    ("deepseek", "deepseek-reasoner"): "2025-09-29",
    ("gemini", "gemini-1.5-pro"): "2024-10-01",
    ("gemini", "gemini-1.5-flash"): "2024-08-12",
    ("gemini", "gemini-1.5-flash-8b"): "2024-10-03",
    ("gemini", "gemini-2.0-flash"): "2025-02-05",
    ("gemini", "gemini-2.0-flash-lite"): "2025-02-25",
}

# Local runtimes: no per-token bill, but the entry still carries a tier so token limits and
# routing policy apply. "*" covers models of <= 8B parameters or unknown size, "*>8b" bigger.
LOCAL_PROVIDERS = ("ollama", "vllm")
LOCAL_WILDCARDS = (("*", "local_lightweight"), ("*>8b", "local_midweight"))

PRICE_FIELDS = ("input", "output", "cache_read", "cache_write", "reasoning")
LITELLM_FIELDS = {
    "input": "input_cost_per_token",
    "output": "output_cost_per_token",
    "cache_read": "cache_read_input_token_cost",
    "cache_write": "cache_creation_input_token_cost",
    "reasoning": "output_cost_per_reasoning_token",
}

_FULL_DATE = re.compile(r"-(\d{4})-?(\d{2})-?(\d{2})$")
_SUFFIXES = [
    re.compile(r"-latest$"),
    re.compile(r"-\d{4}-\d{2}-\d{2}$"),
    re.compile(r"-20\d{6}$"),
    re.compile(r"-(0[1-9]|1[0-2])(0[1-9]|[12]\d|3[01])$"),
    re.compile(r"-(2[3-9])(0[1-9]|1[0-2])$"),
    re.compile(r"-00\d$"),
    re.compile(r"-(non-)?reasoning$"),
    re.compile(r"-beta$"),
    re.compile(r"-experimental$"),
]


@dataclass
class Raw:
    """One LiteLLM record, reduced to the fields the catalog keeps."""

    provider: str
    name: str
    prices: dict[str, str | None]
    context_window: int | None
    max_output: int | None
    mode: str
    version: str
    changed_since_fallback: bool = False


@dataclass
class Group:
    """Names that share one base model and one price."""

    provider: str
    base: str
    members: list[Raw] = field(default_factory=list)
    aliases: list[str] = field(default_factory=list)


def usd_per_mtok(per_token: float | int | None) -> str | None:
    """Convert LiteLLM's float USD/token to an exact USD/Mtok decimal string."""
    if per_token is None:
        return None
    value = (Decimal(repr(float(per_token))) * 1_000_000).quantize(Decimal("0.000001"))
    return fmt(value)


def fmt(value: Decimal) -> str:
    """Render a price with at least cents precision and no float noise."""
    value = value.normalize()
    if value == value.to_integral_value() or -value.as_tuple().exponent < 2:
        return f"{value:.2f}"
    return f"{value:f}"


def base_name(name: str) -> str:
    """Strip -latest, date and version suffixes until none is left."""
    while True:
        for pattern in _SUFFIXES:
            stripped = pattern.sub("", name)
            if stripped != name:
                name = stripped
                break
        else:
            return name


def snapshot_date(name: str) -> str | None:
    """Return the ISO date encoded in a snapshot name, if it carries a full one."""
    match = _FULL_DATE.search(name)
    if not match:
        return None
    year, month, day = (int(g) for g in match.groups())
    if not (2020 <= year <= 2035 and 1 <= month <= 12 and 1 <= day <= 31):
        return None
    return f"{year:04d}-{month:02d}-{day:02d}"


def excluded(name: str) -> bool:
    return any(p.search(name) for p in _EXCLUDE)


def read_wheel(path: Path) -> dict[str, Any]:
    with zipfile.ZipFile(path) as wheel:
        return json.loads(wheel.read(PRICE_FILE))


def find_or_download(version: str, directory: Path) -> Path:
    """Locate the pinned litellm wheel, downloading it with pip when absent."""
    for candidate in sorted(directory.glob(f"litellm-{version}-*.whl")):
        return candidate
    subprocess.run(
        [
            sys.executable,
            "-m",
            "pip",
            "download",
            f"litellm=={version}",
            "--no-deps",
            "--only-binary=:all:",
            "--quiet",
            "-d",
            str(directory),
        ],
        check=True,
    )
    return next(directory.glob(f"litellm-{version}-*.whl"))


def strip_provider(key: str, provider: str) -> str:
    prefix = f"{provider}/"
    return key[len(prefix) :] if key.startswith(prefix) else key


def extract(table: dict[str, Any], version: str) -> dict[tuple[str, str], Raw]:
    """Select the records the catalog can price by text tokens alone."""
    out: dict[tuple[str, str], Raw] = {}
    for key in sorted(table):
        record = table[key]
        if not isinstance(record, dict) or key == "sample_spec":
            continue
        provider = record.get("litellm_provider")
        mode = record.get("mode")
        if provider not in PROVIDERS or mode not in MODES:
            continue
        name = strip_provider(key, provider)
        if excluded(name) or record.get("input_cost_per_token") is None:
            continue
        if provider == "openai" and "/" in name:
            continue
        name = RENAMES.get((provider, name), name)
        prices = {f: usd_per_mtok(record.get(LITELLM_FIELDS[f])) for f in PRICE_FIELDS}
        if mode == "embedding" and prices["output"] is None:
            prices["output"] = "0.00"
        if prices["output"] is None:
            continue
        raw = Raw(
            provider=provider,
            name=name,
            prices=prices,
            context_window=_int(record.get("max_input_tokens") or record.get("max_tokens")),
            max_output=None if mode == "embedding" else _int(record.get("max_output_tokens")),
            mode=mode,
            version=version,
        )
        previous = out.get((provider, name))
        # Prefer the provider-prefixed key: it is the one LiteLLM routes through.
        if previous is None or key.startswith(f"{provider}/"):
            out[(provider, name)] = raw
    return out


def _int(value: Any) -> int | None:
    return None if value is None else int(value)


def normalise(raw: Raw) -> None:
    """Apply the corrections and the catalog's null conventions to one record."""
    raw.prices.update(OVERRIDES.get((raw.provider, raw.name), {}))
    prices = raw.prices
    # A zero cache-write price is LiteLLM's way of saying "no separate write price"; the
    # catalog says that with null (writes then cost the input rate, never nothing).
    if prices["cache_write"] is not None and Decimal(prices["cache_write"]) == 0:
        prices["cache_write"] = None
    if raw.provider == "gemini":
        # Gemini bills cache storage per hour, not per written token.
        prices["cache_write"] = None
    if prices["reasoning"] is not None and prices["reasoning"] == prices["output"]:
        prices["reasoning"] = None


def is_free(raw: Raw) -> bool:
    return all(v is None or Decimal(v) == 0 for v in raw.prices.values())


def price_key(raw: Raw) -> tuple[str | None, ...]:
    return tuple(raw.prices[f] for f in PRICE_FIELDS)


def group(raws: list[Raw]) -> list[tuple[str, Group]]:
    """Fold names with one base and one price into entries; name each entry."""
    by_base: dict[tuple[str, str], dict[tuple[str | None, ...], Group]] = defaultdict(dict)
    for raw in raws:
        base = base_name(raw.name)
        groups = by_base[(raw.provider, base)]
        groups.setdefault(price_key(raw), Group(raw.provider, base)).members.append(raw)

    named: list[tuple[str, Group]] = []
    for (_, base), groups in sorted(by_base.items()):
        owner = _owner(base, list(groups.values()))
        for grp in groups.values():
            names = {m.name for m in grp.members}
            latest = f"{base}-latest"
            if grp is owner and (base in names or any(snapshot_date(n) for n in names)):
                named.append((base, grp))
                continue
            model = latest if latest in names else min(names)
            if grp is owner and (grp.provider, base) not in NO_BASE_ALIAS:
                grp.aliases.append(base)
            named.append((model, grp))
    return named


def _owner(base: str, groups: list[Group]) -> Group:
    """Pick the group the undated name points at: the bare name, then -latest, then newest."""
    for wanted in (base, f"{base}-latest"):
        for grp in groups:
            if any(m.name == wanted for m in grp.members):
                return grp
    return max(groups, key=lambda g: max(snapshot_date(m.name) or "" for m in g.members))


def to_entry(model: str, grp: Group) -> dict[str, Any]:
    members = sorted(grp.members, key=lambda m: (m.name != model, m.name))
    head = next((m for m in members if m.name == model), None)
    if head is None:
        head = next((m for m in members if m.name == f"{model}-latest"), members[0])
    aliases = sorted({m.name for m in members if m.name != model} | set(grp.aliases))
    aliases += [a for a in EXTRA_ALIASES.get((grp.provider, model), []) if a not in aliases]
    captured = AS_OF if head.version == LITELLM_VERSION else FALLBACK_AS_OF
    date = (
        EFFECTIVE_DATES.get((grp.provider, model))
        or (captured if head.changed_since_fallback else None)
        or min((d for m in members if (d := snapshot_date(m.name))), default=None)
        or captured
    )
    source = f"litellm:{SOURCE_NAME}@{head.version}"
    if any((grp.provider, m.name) in OVERRIDES for m in members):
        source += f"+{MANUAL_SOURCE}"
    return {
        "provider": grp.provider,
        "model": model,
        "aliases": aliases,
        "input_usd_per_mtok": head.prices["input"],
        "output_usd_per_mtok": head.prices["output"],
        "cache_read_usd_per_mtok": head.prices["cache_read"],
        "cache_write_usd_per_mtok": head.prices["cache_write"],
        "reasoning_usd_per_mtok": head.prices["reasoning"],
        **NO_UNIT_PRICES,
        "usd_per_tool_call": TOOL_FEES.get((grp.provider, model), {}),
        "context_window_tokens": head.context_window,
        "max_output_tokens": head.max_output,
        "tier": "remote_heavyweight",
        "mode": head.mode,
        "effective_date": date,
        "source": source,
    }


def local_entries() -> list[dict[str, Any]]:
    return [
        {
            "provider": provider,
            "model": model,
            "aliases": [],
            "input_usd_per_mtok": "0.00",
            "output_usd_per_mtok": "0.00",
            "cache_read_usd_per_mtok": None,
            "cache_write_usd_per_mtok": None,
            "reasoning_usd_per_mtok": None,
            **NO_UNIT_PRICES,
            "context_window_tokens": None,
            "max_output_tokens": None,
            "tier": tier,
            "mode": "chat",
            "effective_date": AS_OF,
            "source": f"{MANUAL_SOURCE}:local-runtime",
        }
        for provider in LOCAL_PROVIDERS
        for model, tier in LOCAL_WILDCARDS
    ]


NO_UNIT_PRICES: dict[str, Any] = {
    "input_usd_per_char": None,
    "usd_per_image": None,
    "usd_per_image_by_size": {},
    "usd_per_second": None,
    "usd_per_request": None,
    "usd_per_tool_call": {},
}
# Responses API built-in tools billed per call (USD), from OpenAI's pricing page: file
# search $2.50 and web search $10 per 1,000 calls; the older web_search_preview $25 per
# 1,000 with the non-reasoning models. A model not listed has no fee here: a call enabling
# such a tool follows the unknown-price rule.
_FILE_SEARCH = {"file_search": "0.0025"}
_WEB_SEARCH = {"web_search": "0.010", **_FILE_SEARCH}
TOOL_FEES: dict[tuple[str, str], dict[str, str]] = {
    **{("openai", m): {**_WEB_SEARCH, "web_search_preview": "0.025"}
       for m in ("gpt-4o", "gpt-4o-mini", "gpt-4.1", "gpt-4.1-mini")},
    **{("openai", m): {**_WEB_SEARCH, "web_search_preview": "0.010"}
       for m in ("o3", "o4-mini", "gpt-5", "gpt-5-mini", "gpt-5-nano")},
    ("openai", "gpt-4.1-nano"): _FILE_SEARCH,
}
MEDIA_SOURCE = f"{MANUAL_SOURCE}:openai-pricing-page"


def media_entry(model: str, mode: str, *, input_rate: str = "0", output_rate: str = "0",
                max_output: int | None = None, **units: Any) -> dict[str, Any]:
    return {
        "provider": "openai", "model": model, "aliases": [],
        "input_usd_per_mtok": input_rate, "output_usd_per_mtok": output_rate,
        "cache_read_usd_per_mtok": None, "cache_write_usd_per_mtok": None,
        "reasoning_usd_per_mtok": None, **NO_UNIT_PRICES, **units,
        "context_window_tokens": None, "max_output_tokens": max_output,
        "tier": "remote_heavyweight", "mode": mode, "effective_date": AS_OF,
        "source": MEDIA_SOURCE,
    }


def media_entries() -> list[dict[str, Any]]:
    """OpenAI's image and audio models, priced by the unit (the LiteLLM table's per-pixel and
    per-character figures are not the list prices): images by quality and size, speech per
    input character, transcription per second of audio. gpt-image-1 is priced by tokens: text
    input, image output (at most 6240 tokens for one high-quality 1536x1024 image)."""
    return [
        media_entry("dall-e-2", "image_generation", usd_per_image="0.020",
                    usd_per_image_by_size={"256x256": "0.016", "512x512": "0.018",
                                            "1024x1024": "0.020"}),
        media_entry("dall-e-3", "image_generation", usd_per_image="0.040",
                    usd_per_image_by_size={
                        "standard/1024x1024": "0.040", "standard/1024x1792": "0.080",
                        "standard/1792x1024": "0.080", "hd/1024x1024": "0.080",
                        "hd/1024x1792": "0.120", "hd/1792x1024": "0.120"}),
        media_entry("gpt-image-1", "image_generation", input_rate="5.00", output_rate="40.00",
                    max_output=6240),
        media_entry("tts-1", "audio_speech", input_usd_per_char="0.000015"),
        media_entry("tts-1-hd", "audio_speech", input_usd_per_char="0.000030"),
        media_entry("whisper-1", "audio_transcription", usd_per_second="0.0001"),
    ]


def build(current: dict[str, Any], fallback: dict[str, Any]) -> list[dict[str, Any]]:
    now = extract(current, LITELLM_VERSION)
    old = extract(fallback, FALLBACK_LITELLM_VERSION)
    for key, raw in now.items():
        if key in old and price_key(old[key]) != price_key(raw):
            raw.changed_since_fallback = True
    merged = {**old, **now}
    raws = []
    for raw in merged.values():
        normalise(raw)
        if not is_free(raw):
            raws.append(raw)
    entries = [to_entry(model, grp) for model, grp in group(raws)]
    _check_unique(entries)
    entries += local_entries() + media_entries()
    _check_unique(entries)
    return sorted(entries, key=lambda e: (e["provider"], e["model"]))


def _check_unique(entries: list[dict[str, Any]]) -> None:
    seen: dict[tuple[str, str], str] = {}
    for entry in entries:
        for name in [entry["model"], *entry["aliases"]]:
            key = (entry["provider"], name.lower())
            if key in seen:
                raise SystemExit(f"{key} is claimed by both {seen[key]} and {entry['model']}")
            seen[key] = entry["model"]


def render(entries: list[dict[str, Any]]) -> str:
    header = {
        "schema_version": 1,
        "units": "USD per million tokens, decimal strings",
        "litellm_version": LITELLM_VERSION,
        "fallback_litellm_version": FALLBACK_LITELLM_VERSION,
        "as_of": AS_OF,
    }
    head = json.dumps(header, indent=1)[:-2]
    body = ",\n".join("  " + json.dumps(e, ensure_ascii=False) for e in entries)
    return f'{head},\n "entries": [\n{body}\n ]\n}}\n'


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--wheel-dir", type=Path, help="directory holding the litellm wheels")
    parser.add_argument("--output", type=Path, default=CATALOG_PATH)
    parser.add_argument("--check", action="store_true", help="fail if the output is stale")
    args = parser.parse_args(argv)

    with tempfile.TemporaryDirectory(prefix="litellm-") as scratch:
        directory = args.wheel_dir or Path(scratch)
        current = read_wheel(find_or_download(LITELLM_VERSION, directory))
        fallback = read_wheel(find_or_download(FALLBACK_LITELLM_VERSION, directory))
    text = render(build(current, fallback))
    if args.check:
        if not args.output.exists() or args.output.read_text() != text:
            print(f"{args.output} is out of date; rerun pricing/build_catalog.py", file=sys.stderr)
            return 1
        return 0
    args.output.write_text(text)
    print(f"wrote {args.output}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
