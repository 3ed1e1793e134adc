"""The `budget` / `budget-proxy` command line (`main`; see `budget_proxy.cli.root`).

One module per command group; `common` holds the exit codes and the admin API on the Python
client's transport, `output` the tables and money formatting.
"""

from budget_proxy.cli.common import (
    EXIT_API,
    EXIT_AUTH,
    EXIT_STORE_DOWN,
    EXIT_UNREACHABLE,
    EXIT_USAGE,
    CliError,
    duration_s,
)
from budget_proxy.cli.output import emit, limit_text, money
from budget_proxy.cli.root import main

__all__ = [
    "EXIT_API", "EXIT_AUTH", "EXIT_STORE_DOWN", "EXIT_UNREACHABLE", "EXIT_USAGE", "CliError",
    "duration_s", "emit", "limit_text", "main", "money",
]
