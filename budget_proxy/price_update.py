"""Old import path of `budget_proxy.pricing.update`, kept for the modules that still use it."""

from budget_proxy.pricing.update import book_of, prices_ctx, updater_for

__all__ = ["book_of", "prices_ctx", "updater_for"]
