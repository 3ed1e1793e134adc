"""Configuration: environment variables (pydantic-settings) plus an optional TOML file.

Environment names follow the interface contract (`BUDGET_*`, `OPENAI_API_KEY`, ...). The TOML
file (`BUDGET_CONFIG` or `--config`) adds `[providers.NAME]` tables and a policy directory.
"""

from __future__ import annotations

import ipaddress
import os
import tomllib
from pathlib import Path
from typing import Literal

from pydantic import (
    AliasChoices,
    BaseModel,
    Field,
    StrictBool,
    ValidationError,
    field_validator,
    model_validator,
)
from pydantic_settings import BaseSettings, SettingsConfigDict

ProviderApi = Literal["openai", "anthropic", "gemini", "azure", "ollama"]


class ProviderConfig(BaseModel):
    """One upstream: where it lives, which wire format it speaks (its adapter in
    `budget_proxy.providers`), which key the proxy holds."""

    name: str
    base_url: str
    api: ProviderApi = "openai"
    api_key_env: str | None = None
    key_required: StrictBool | None = Field(
        None, description="Refuse calls while the proxy holds no key for this provider; "
        "unset: as its API family needs (an `ollama` runtime needs none).")
    deployments: dict[str, str] = Field(
        default_factory=dict, description="Azure: deployment name -> the catalog model it "
        "serves; a deployment not listed is priced as the model of its own name.")

    @property
    def api_key(self) -> str | None:
        return os.environ.get(self.api_key_env) if self.api_key_env else None


class WebhookConfig(BaseModel):
    """One alert webhook: `json` posts the alert event as is, `slack` posts `{"text": ...}`."""

    url: str
    format: Literal["json", "slack"] = "json"


def parse_webhook_urls(text: str | None) -> list[WebhookConfig]:
    """`BUDGET_WEBHOOK_URLS`: comma-separated URLs; a `slack+` prefix selects the Slack format."""
    hooks = []
    for item in (text or "").split(","):
        url = item.strip()
        if not url:
            continue
        if url.startswith("slack+"):
            hooks.append(WebhookConfig(url=url[len("slack+"):], format="slack"))
        else:
            hooks.append(WebhookConfig(url=url))
    return hooks


PriceSourceKind = Literal["litellm", "openrouter", "file"]


class PriceSourceConfig(BaseModel):
    """One price source (`budget_proxy.pricing.sources`): where it is, which format, how far it
    is trusted (default by kind: file 1.0, litellm 0.8, openrouter 0.7)."""

    kind: PriceSourceKind
    name: str | None = None
    url: str | None = None
    path: Path | None = None
    format: Literal["auto", "catalog", "litellm", "openrouter"] = "auto"
    trust: float | None = Field(None, ge=0, le=1)

    @model_validator(mode="after")
    def _has_a_location(self) -> PriceSourceConfig:
        if not self.url and self.path is None:
            raise ValueError(f"price source {self.name or self.kind} needs a url or a path")
        return self


class Settings(BaseSettings):
    """Process settings; each field documents the environment variable that sets it."""

    model_config = SettingsConfigDict(env_prefix="BUDGET_", extra="ignore", populate_by_name=True)

    host: str = Field("127.0.0.1", description="Address to listen on.")
    port: int = Field(8013, description="Port for proxy, admin API, WebSockets and metrics.")
    data_dir: Path = Field(
        Path("./budget-data"), description="Directory of the embedded store (SQLite)."
    )
    redis_url: str | None = Field(None, description="Use the Redis store at this URL.")
    database_url: str | None = Field(
        None, description="PostgreSQL ledger (postgresql://...): usage records and hourly "
        "rollups live there and every usage reader reads it; needs BUDGET_REDIS_URL.")
    record_retention_days: float = Field(
        30.0, gt=0, le=36500, description="Without a database: days the Redis store keeps "
        "usage records.")
    drift_check_interval_s: float = Field(
        300.0, ge=0, description="With a database: how often counters are compared with the "
        "ledger (0: never); a drift raises an alert.")
    admin_token: str | None = Field(None, description="Bearer token required for mutations.")
    viewer_token: str | None = Field(None, description="Bearer token allowed to read only.")
    component: str = Field("default", description="Component charged when a request names none.")
    config: Path | None = Field(None, description="TOML configuration file.")
    log_level: str = Field("INFO", description="Logging level.")
    fail_mode: Literal["closed", "open"] = Field(
        "closed", description="What to do when the store is unreachable."
    )
    timezone: str = Field("UTC", description="Time zone of calendar windows.")
    openai_base_url: str = Field("https://api.openai.com/v1", description="OpenAI upstream.")
    anthropic_base_url: str = Field("https://api.anthropic.com", description="Anthropic upstream.")
    max_body_bytes: int = Field(32 * 1024 * 1024, description="Largest request body accepted.")
    reservation_ttl_s: float = Field(
        600.0, description="A reservation not settled within this time is released by the reaper."
    )
    upstream_timeout_s: float = Field(600.0, description="Total timeout of one upstream call.")
    upstream_connect_timeout_s: float = Field(10.0, description="Upstream connect timeout.")
    reaper_interval_s: float = Field(5.0, description="How often expired reservations are swept.")
    policies_dir: Path | None = Field(None, description="Directory of policy TOML files.")
    unmetered: Literal["refuse", "allow"] = Field(
        "refuse", description="A POST under a provider prefix that is neither metered nor on "
        "the free allowlist: `refuse` (403 unmetered_route) or `allow` (forwarded, logged, "
        "counted in budget_proxy_unmetered_requests_total).",
    )
    on_insufficient: Literal["refuse", "fit"] = Field(
        "refuse", description="A request whose worst case a hard limit cannot pay: `refuse` "
        "(429) or `fit` (forwarded with its output cap lowered to what the tightest budget "
        "pays, told in `X-Budget-Max-Tokens`; refused only when not even the input fits).",
    )
    stream_enforcement: Literal["incremental", "worst_case"] = Field(
        "incremental", description="Streams: `incremental` holds the input plus one slice of "
        "output and extends the hold a slice ahead of what was relayed, ending the stream "
        "cleanly (finish_reason length / stop_reason max_tokens) when a hard limit refuses "
        "an extension; `worst_case` holds the whole output cap up front.",
    )
    stream_slice_tokens: int = Field(
        256, ge=1, le=1_000_000,
        description="Output tokens a stream's hold is extended by under incremental holds.",
    )
    require_key: bool = Field(
        False, description="Proxy routes require a `bp-` virtual key (401 otherwise).")
    allow_open_admin: bool = Field(
        False, description="Allow a non-loopback bind without BUDGET_ADMIN_TOKEN.")
    header_timeout_s: float = Field(
        30.0, gt=0, le=3600,
        description="A client must send its request line and headers within this time.")
    unknown_price: Literal["refuse", "ceiling", "alert"] = Field(
        "ceiling", description="Rule for a model missing from the price catalog."
    )
    price_sources: str | None = Field(
        None, description="Price sources, comma-separated `kind=url-or-path[|trust]` "
        "(kind litellm, openrouter or file), a JSON list of `[[price_sources]]` tables, or "
        "`default` for LiteLLM's published JSON and OpenRouter's models API.",
    )
    price_update_interval: float = Field(
        0.0, ge=0, validation_alias=AliasChoices(
            "PRICE_UPDATE_INTERVAL", "BUDGET_PRICE_UPDATE_INTERVAL", "price_update_interval"),
        description="Minutes between scheduled price updates (PRICE_UPDATE_INTERVAL); 0: off.",
    )
    price_tolerance: float = Field(
        0.01, ge=0, description="Relative difference within which two sources' prices agree."
    )
    price_min_trust: float = Field(
        1.0, ge=0, description="Total trust of agreeing sources needed to apply a price.",
    )
    price_source_tables: list[PriceSourceConfig] = Field(
        default_factory=list, description="`[[price_sources]]` tables of the config file."
    )
    assistant_model: str | None = Field(
        None, pattern=r"^[A-Za-z0-9_.-]+/\S+$",
        description="`provider/model` the Budget Chat's tool-calling loop uses (its calls go "
        "through this proxy as component budget-assistant); unset: deterministic answers.")
    hermes_url: str | None = Field(
        None, validation_alias=AliasChoices("HERMES_URL", "BUDGET_HERMES_URL")
    )

    webhook_urls: str | None = Field(
        None, description="Alert webhooks, comma-separated; `slack+https://...` for Slack."
    )
    webhook_timeout_s: float = Field(5.0, description="Timeout of one webhook delivery attempt.")
    webhook_max_attempts: int = Field(6, ge=1, description="Delivery attempts per alert.")
    webhook_backoff_s: float = Field(
        1.0, description="Delay before the first retry; doubled for each further retry."
    )

    providers: dict[str, ProviderConfig] = Field(default_factory=dict)
    webhooks: list[WebhookConfig] = Field(
        default_factory=list, description="`[[webhooks]]` tables of the config file."
    )

    @field_validator("price_sources")
    @classmethod
    def _valid_price_sources(cls, value: str | None) -> str | None:
        from budget_proxy.pricing.sources import parse_sources_env

        parse_sources_env(value)  # raises naming the bad entry
        return value

    @field_validator("admin_token", "viewer_token")
    @classmethod
    def _token_not_blank(cls, value: str | None) -> str | None:
        # an empty BUDGET_ADMIN_TOKEN would otherwise read as "set" and match nothing, or as
        # unset and open everything: either is a mistake worth refusing to start on
        if value is not None and not value.strip():
            raise ValueError("is set but empty: give a token or unset the variable")
        return value

    @property
    def open_admin(self) -> bool:
        """Anyone who can reach the listen address may change budgets."""
        return self.admin_token is None and not is_loopback(self.host)

    @model_validator(mode="after")
    def _ledger_needs_redis(self) -> Settings:
        if self.database_url is not None:
            if not self.database_url.startswith(("postgresql://", "postgres://")):
                raise ValueError("BUDGET_DATABASE_URL must be a postgresql:// URL")
            if self.redis_url is None:
                raise ValueError("BUDGET_DATABASE_URL needs BUDGET_REDIS_URL: the embedded "
                                 "store keeps its usage records itself")
        return self

    def check_serving(self) -> None:
        """What `serve` refuses to start with, beyond each field's own validation."""
        if self.open_admin and not self.allow_open_admin:
            raise ConfigError(
                f"BUDGET_HOST: listening on {self.host} (not loopback) with no "
                "BUDGET_ADMIN_TOKEN would let anyone on the network change budgets: set "
                "BUDGET_ADMIN_TOKEN, listen on 127.0.0.1, or set BUDGET_ALLOW_OPEN_ADMIN=true")
        if self.database_url:
            import importlib.util

            if importlib.util.find_spec("asyncpg") is None:
                raise ConfigError("BUDGET_DATABASE_URL needs the PostgreSQL driver: "
                                  "pip install 'budget-proxy[postgres]'")

    @field_validator("timezone")
    @classmethod
    def _known_timezone(cls, value: str) -> str:
        from zoneinfo import ZoneInfo

        ZoneInfo(value)
        return value

    def all_providers(self) -> dict[str, ProviderConfig]:
        """The built-in providers overlaid with the ones from the config file."""
        builtin = {
            "openai": ProviderConfig(
                name="openai", base_url=self.openai_base_url, api="openai",
                api_key_env="OPENAI_API_KEY",
            ),
            "anthropic": ProviderConfig(
                name="anthropic", base_url=self.anthropic_base_url, api="anthropic",
                api_key_env="ANTHROPIC_API_KEY",
            ),
        }
        return {**builtin, **self.providers}

    def all_webhooks(self) -> list[WebhookConfig]:
        """The config file's `[[webhooks]]` plus `BUDGET_WEBHOOK_URLS`."""
        return [*self.webhooks, *parse_webhook_urls(self.webhook_urls)]


def is_loopback(host: str) -> bool:
    """Whether a listen address only accepts local connections (`localhost`, 127.0.0.0/8,
    ::1). Any other name or address, the wildcards included, may be reachable from outside."""
    if host.strip().lower() == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip().strip("[]")).is_loopback
    except ValueError:
        return False


class ConfigError(ValueError):
    """A configuration file is invalid; the message names the file and the key."""


def _settings_error(exc: ValidationError) -> ConfigError:
    """A settings validation error as one line per problem, named by its variable."""
    lines = []
    for err in exc.errors(include_url=False):
        loc = [str(p) for p in err["loc"]]
        name = f"BUDGET_{loc[0].upper()}" if loc else "configuration"
        lines.append(f"{name}: {err['msg'].removeprefix('Value error, ')}")
    return ConfigError("invalid configuration: " + "; ".join(lines))


def load_settings(config_path: Path | None = None, **overrides: object) -> Settings:
    """Settings from the TOML file's `[proxy]` and `[providers.*]` tables, overridden by the
    environment, overridden by explicit arguments (the CLI's flags)."""
    try:
        env_settings = Settings()
    except ValidationError as exc:
        raise _settings_error(exc) from exc
    path = config_path or env_settings.config
    file_values: dict[str, object] = {}
    if path is not None:
        try:
            raw = tomllib.loads(Path(path).read_text())
        except (OSError, tomllib.TOMLDecodeError) as exc:
            raise ConfigError(f"{path}: {exc}") from exc
        file_values.update(raw.get("proxy", {}))
        providers = {}
        for name, table in raw.get("providers", {}).items():
            try:
                providers[name] = ProviderConfig(name=name, **table)
            except Exception as exc:
                raise ConfigError(f"{path}: [providers.{name}]: {exc}") from exc
        file_values["providers"] = providers
        try:
            file_values["webhooks"] = [WebhookConfig(**t) for t in raw.get("webhooks", [])]
        except Exception as exc:
            raise ConfigError(f"{path}: [[webhooks]]: {exc}") from exc
        try:
            file_values["price_source_tables"] = [
                PriceSourceConfig(**t) for t in raw.get("price_sources", [])]
        except Exception as exc:
            raise ConfigError(f"{path}: [[price_sources]]: {exc}") from exc
        file_values["config"] = path
    merged = {**file_values, **env_settings.model_dump(exclude_unset=True), **overrides}
    try:
        return Settings(**{k: v for k, v in merged.items() if v is not None})
    except ValidationError as exc:
        raise _settings_error(exc) from exc
