"""Old import path of `budget_proxy.pricing.sources`, kept for the modules that still use it."""

from budget_proxy.pricing.sources import from_per_mtok, from_per_token, parse_sources_env

__all__ = ["from_per_mtok", "from_per_token", "parse_sources_env"]
