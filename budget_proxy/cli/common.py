"""What every command shares: exit codes, the error type that carries one, the alias group,
`--json` after a command, and `Api`, the admin API on the Python client's transport with its
errors turned into exit codes and messages in one place (`cli_error`)."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any, TypeVar

import click

from budget_proxy.client import (
    BudgetAuthError,
    BudgetClient,
    BudgetConnectionError,
    BudgetError,
    BudgetStoreUnavailableError,
    BudgetValidationError,
)

EXIT_API = 1  # the proxy refused or failed the request (conflict, not found, ...)
EXIT_USAGE = 2  # bad arguments: ours or the proxy's validation
EXIT_UNREACHABLE = 3  # the proxy could not be reached
EXIT_AUTH = 4  # bad or missing token
EXIT_STORE_DOWN = 5  # the proxy is up but its budget store is not (retry later)

HELP_JSON = "Print machine-readable JSON instead of a table."
DURATION_UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400}

F = TypeVar("F", bound=Callable[..., Any])


class CliError(click.ClickException):
    """An error with its own exit code (see `EXIT_*`)."""

    def __init__(self, message: str, exit_code: int = EXIT_API) -> None:
        super().__init__(message)
        # click declares exit_code a class attribute; each error carries its own here
        self.exit_code = exit_code  # type: ignore[misc]


def cli_error(exc: BudgetError, client: BudgetClient) -> CliError:
    """The one mapping of the client's errors to the CLI's exit codes and messages."""
    if isinstance(exc, BudgetConnectionError):
        return CliError(f"{exc} (is it running? set --url or BUDGET_URL)", EXIT_UNREACHABLE)
    if exc.status == 401:
        if "Authorization" in client.headers:
            return CliError("401: invalid token: the proxy does not accept it (check --token "
                            "or BUDGET_ADMIN_TOKEN)", EXIT_AUTH)
        return CliError(f"{exc} (pass --token or set BUDGET_ADMIN_TOKEN)", EXIT_AUTH)
    if isinstance(exc, BudgetStoreUnavailableError):
        retry = exc.retry_after_s
        return CliError(f"budget store unavailable: the proxy at {client.url} is up but cannot "
                        "reach its store" + (f"; retry in {retry:g} s" if retry else ""),
                        EXIT_STORE_DOWN)
    if isinstance(exc, BudgetAuthError):
        return CliError(str(exc), EXIT_AUTH)
    if isinstance(exc, BudgetValidationError):
        return CliError(str(exc), EXIT_USAGE)
    return CliError(str(exc), EXIT_API)


class Api:
    """The admin API as the commands call it: `BudgetClient`'s transport (made on first use,
    so `serve` and the offline commands open none), every error through `cli_error`."""

    def __init__(self, url: str, token: str | None) -> None:
        self.url, self.token = url, token
        self._client: BudgetClient | None = None

    @property
    def client(self) -> BudgetClient:
        if self._client is None:
            self._client = BudgetClient(self.url, self.token)
        return self._client

    def close(self) -> None:
        if self._client is not None:
            self._client.close()

    @contextmanager
    def errors(self) -> Iterator[BudgetClient]:
        """The client, its errors raised as `CliError`s."""
        try:
            yield self.client
        except BudgetError as exc:
            raise cli_error(exc, self.client) from exc

    def request(self, method: str, path: str, *, params: dict[str, Any] | None = None,
                 json: Any = None) -> Any:
        """The JSON answer of one admin API call."""
        with self.errors() as client:
            return client.request(method, path, params=params, json=json)


class AliasGroup(click.Group):
    """Accepts `set_limit` for `set-limit` (and `start` for `serve`)."""

    aliases = {"start": "serve"}

    def get_command(self, ctx: click.Context, cmd_name: str) -> click.Command | None:
        name = self.aliases.get(cmd_name, cmd_name)
        return super().get_command(ctx, name) or super().get_command(
            ctx, name.replace("_", "-")
        )


def _set_json(ctx: click.Context, _param: click.Parameter, value: bool) -> None:
    if value:
        ctx.ensure_object(dict)["json"] = True


def json_option(func: F) -> F:
    """`--json` after the command name too (`budget status --json`)."""
    return click.option("--json", "as_json", is_flag=True, expose_value=False,
                        callback=_set_json, help=HELP_JSON)(func)


def clean(body: dict[str, Any]) -> dict[str, Any]:
    """A body or query without its unset (None) fields."""
    return {k: v for k, v in body.items() if v is not None}


def duration_s(text: str) -> float:
    """`90`, `90s`, `15m`, `24h`, `7d` in seconds."""
    text = text.strip().lower()
    unit = DURATION_UNITS.get(text[-1:], 0)
    number = text[:-1] if unit else text
    try:
        value = float(number) * (unit or 1)
    except ValueError:
        raise click.BadParameter(f"{text!r} is not a duration (90s, 15m, 24h, 7d)") from None
    if not value > 0 or value == float("inf"):
        raise click.BadParameter("must be more than 0")
    return value
