"""Log hygiene: one line per record whatever the values say, and no secret in any line.

- `SafeFormatter` escapes control characters (CR, LF, ESC, ... and the Unicode line
  separators) in the formatted message, so a model name or header with a newline cannot forge
  a log line or drive a terminal; tracebacks keep their own lines.
- `redact_url` drops the password (and any token in the user part) of a URL: every place that
  logs a store or upstream URL goes through it.
- `startup_summary` is the block `serve` logs once: store and where, fail mode, providers and
  whether each has a key (never the key), policies, tokens set or not.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Iterable
from urllib.parse import urlsplit, urlunsplit

from budget_proxy.config import Settings

LOG_FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"
# C0 and C1 controls, DEL, and the Unicode line and paragraph separators
_CONTROL = re.compile(r"[\x00-\x1f\x7f-\x9f\u2028\u2029]")
_NAMED = {"\n": "\\n", "\r": "\\r", "\t": "\\t"}
_SECRET_PARAMS = frozenset({"password", "pass", "passwd", "token", "auth", "secret", "key"})


def escape_controls(text: str) -> str:
    """`text` with every control character as a visible escape (`\\n`, `\\x1b`, ...)."""
    return _CONTROL.sub(lambda m: _NAMED.get(m.group(), f"\\x{ord(m.group()):02x}")
                        if ord(m.group()) < 0x100 else f"\\u{ord(m.group()):04x}", text)


class SafeFormatter(logging.Formatter):
    """Formats the message with its arguments, then escapes control characters in it; the
    traceback and stack of a record follow on their own lines, as usual."""

    def formatMessage(self, record: logging.LogRecord) -> str:
        record.message = escape_controls(record.message)
        return super().formatMessage(record)


def install(level: str) -> None:
    """Root logging for `serve`: one handler on stderr with `SafeFormatter`."""
    handler = logging.StreamHandler()
    handler.setFormatter(SafeFormatter(LOG_FORMAT))
    root = logging.getLogger()
    for old in list(root.handlers):
        root.removeHandler(old)
    root.addHandler(handler)
    root.setLevel(level.upper())


def redact_url(url: str | None) -> str:
    """The URL without its password (`redis://user:***@host:6379/0`); a user part with no
    password may itself be a token, so it is masked too. Unparseable input is masked whole."""
    if not url:
        return ""
    try:
        parts = urlsplit(url)
        host = parts.hostname or ""
        port = parts.port
    except ValueError:
        return "***"
    query = "&".join(
        f"{name}=***" if name.lower() in _SECRET_PARAMS else f"{name}={value}" if sep else name
        for name, sep, value in (item.partition("=") for item in parts.query.split("&") if item))
    parts = parts._replace(query=query)
    if "@" not in parts.netloc:
        return urlunsplit(parts)
    if ":" in host:
        host = f"[{host}]"
    netloc = f"{host}:{port}" if port is not None else host
    user = parts.username
    if parts.password is not None:
        netloc = f"{user}:***@{netloc}" if user else f":***@{netloc}"
    else:
        netloc = f"***@{netloc}"
    return urlunsplit(parts._replace(netloc=netloc))


def startup_summary(settings: Settings, policies: Iterable[str] | None) -> list[str]:
    """The lines `serve` logs once it listens; no secret, only whether each is set.
    `policies`: the ids in force, or None when the store could not be read yet."""
    if settings.redis_url:
        store = f"redis at {redact_url(settings.redis_url)}"
    else:
        store = f"embedded (SQLite) in {settings.data_dir}"
    providers = ", ".join(
        f"{name} ({'key set' if p.api_key else 'NO KEY: refused'})"
        for name, p in sorted(settings.all_providers().items()))
    names = sorted(policies or ())
    shown = ", ".join(names[:20]) + (", ..." if len(names) > 20 else "")
    policy_line = ("not loaded yet (store unavailable)" if policies is None
                   else f"{len(names)}" + (f" ({shown})" if names else ""))
    lines = [
        f"listening on {settings.host}:{settings.port}",
        f"store: {store}; fail mode: {settings.fail_mode}",
        f"providers: {providers}",
        f"policies: {policy_line}",
        f"admin token: {'set' if settings.admin_token else 'NOT SET'}; "
        f"viewer token: {'set' if settings.viewer_token else 'not set'}",
        f"unmetered routes: {settings.unmetered}; virtual key required: "
        f"{'yes' if settings.require_key else 'no'}",
    ]
    return lines
