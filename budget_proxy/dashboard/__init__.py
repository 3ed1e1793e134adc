"""The dashboard at `/ui/`: static ES modules and a vendored chart library inside the
package (no Node at install or run time, no build step), over the admin API and WebSockets."""

from budget_proxy.dashboard.server import setup

__all__ = ["setup"]
