"""budget-proxy: a sidecar reverse proxy that enforces LLM token and cost budgets inline."""

__version__ = "0.1.0"
