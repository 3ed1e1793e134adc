"""The client edge: canonical paths, route classes and header checks, as pure decisions.

A request under a provider prefix is **metered** (priced, reserved, settled), **free** (costs
nothing at the provider) or **refused**; nothing is forwarded unmetered unless the operator
says so (`BUDGET_UNMETERED=allow`). Paths are judged in the form the client sent them (the raw
path, before percent-decoding) and must be canonical: an upstream or its HTTP client may
normalise `./`, `x/../` or `%2F` on the way out, so a path that is not exactly what was
classified is refused rather than forwarded. The URL sent upstream is built from that same raw
path under the provider's base path, encoded as is, so nothing can re-normalise it outside.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass
from enum import StrEnum
from functools import lru_cache
from urllib.parse import quote

from yarl import URL

from budget_proxy.config import ProviderConfig
from budget_proxy.providers import adapter_for

FREE_METHODS = frozenset({"GET", "HEAD", "DELETE"})

# attribution headers: bounded, printable, or refused at the edge
ATTRIBUTION_HEADERS = (
    "X-Budget-Component", "X-Budget-Session", "X-Budget-Task", "X-Budget-Task-Type",
    "X-Budget-Context", "X-Budget-Allocation",
)
MAX_ATTRIBUTION_CHARS = 256

# encoded '/', '\', '.', '%' (re-decoded by some upstreams) and control characters
_FORBIDDEN_ESCAPE = re.compile(r"%(?:2[EeFf5]|5[Cc]|[01][0-9A-Fa-f]|7[Ff])")
_DOT_SEGMENT = re.compile(r"/\.\.?(?=/|$)")
# One pass: segments of RFC 3986 pchars (unreserved, sub-delims, ':' and '@') or allowed
# percent-escapes, none empty, none '.' or '..'.
_CANONICAL = re.compile(
    r"(?:/(?!\.\.?(?:/|$))(?:[A-Za-z0-9\-._~!$&'()*+,;=:@]"
    r"|%(?!2[EeFf5]|5[Cc]|[01][0-9A-Fa-f]|7[Ff])[0-9A-Fa-f]{2})+)+")
_PCHAR = re.compile(r"[A-Za-z0-9\-._~!$&'()*+,;=:@%/]")
_ID_LIKE = re.compile(r"\d|%|^.{33,}$")
_QUERY_SAFE = "!$&'()*+,;=:@/?%"


class RouteClass(StrEnum):
    METERED = "metered"
    FREE = "free"
    REFUSED = "refused"


class Refusal(Exception):
    """A request refused at the edge; the handler renders it in the format of `api`."""

    def __init__(self, status: int, code: str, message: str, *, api: str = "openai",
                 headers: Mapping[str, str] | None = None) -> None:
        super().__init__(message)
        self.status = status
        self.code = code
        self.message = message
        self.api = api
        self.headers = dict(headers or {})


@dataclass(frozen=True, slots=True)
class Classified:
    """What a request under a provider prefix is: its class, metered endpoint, and why a
    refused one is refused (a sentence for the error message)."""

    route_class: RouteClass
    endpoint: str | None = None
    reason: str = ""


FREE = Classified(RouteClass.FREE)


def path_problem(raw_path: str) -> str | None:
    """Why a raw request path is not canonical, or None when it is."""
    if _CANONICAL.fullmatch(raw_path):
        return None
    if not raw_path.startswith("/"):
        return "the path must start with '/'"
    bad = next((ch for ch in raw_path if not _PCHAR.fullmatch(ch)), None)
    if bad is not None:
        return f"the path has a character that is not allowed: {bad!a}"
    if "//" in raw_path or raw_path.endswith("/"):
        return "the path has an empty segment (double or trailing slash)"
    if _DOT_SEGMENT.search(raw_path):
        return "the path has a '.' or '..' segment"
    escape = _FORBIDDEN_ESCAPE.search(raw_path)
    if escape is not None:
        return (f"the path has a percent-encoded {escape.group()!r} (encoded '/', '\\', '.', "
                "'%' and control characters are refused)")
    return "the path has a malformed percent-escape"


def resolve(
    providers: Mapping[str, ProviderConfig], raw_path: str
) -> tuple[ProviderConfig, str] | None:
    """(provider, path under its API root) for a canonical raw path, or None when its first
    segment names no provider. `/v1/...` is the default provider (openai)."""
    head, _, rest = raw_path[1:].partition("/")
    if head == "v1":
        provider = providers.get("openai")
        return (provider, rest) if provider is not None else None
    provider = providers.get(head)
    if provider is None:
        return None
    return provider, adapter_for(provider.api).api_root(rest)


def api_for_path(providers: Mapping[str, ProviderConfig], raw_path: str) -> str | None:
    """The wire format of the provider a path is under (for error bodies), or None when it
    is not under a provider prefix."""
    resolved = resolve(providers, raw_path)
    return resolved[0].api if resolved else None


def endpoint_kind(api: str, path: str) -> str | None:
    """The metered endpoint a POST path (canonical, under the API root) is, or None. Exact
    spellings only: `Chat/Completions` or an escape in a Gemini model name is not metered."""
    return adapter_for(api).endpoint_kind(path)


def is_free_post(api: str, path: str) -> bool:
    return adapter_for(api).is_free_post(path)


def classify(api: str, method: str, path: str, *, websocket: bool = False) -> Classified:
    """Metered, free or refused, for a canonical path under the provider's API root."""
    if websocket:
        return Classified(RouteClass.REFUSED, reason="a WebSocket upgrade (realtime) is not "
                          "metered")
    if method in FREE_METHODS:
        return FREE
    if method != "POST":
        return Classified(RouteClass.REFUSED, reason=f"method {method} is not metered")
    adapter = adapter_for(api)
    kind = adapter.endpoint_kind(path)
    if kind is not None:
        return Classified(RouteClass.METERED, endpoint=kind)
    if adapter.is_free_post(path):
        return FREE
    return Classified(RouteClass.REFUSED, reason=adapter.refused_reason(path))


def path_shape(path: str) -> str:
    """A path with its id-like segments folded (`files/{id}/content`): one log line per shape."""
    return "/".join("{id}" if _ID_LIKE.search(seg) else seg for seg in path.split("/"))


@lru_cache(maxsize=256)
def _base(base_url: str) -> tuple[str, str, str]:
    url = URL(base_url)
    return url.scheme, url.raw_authority, url.raw_path.rstrip("/")


def upstream_url(base_url: str, rest: str, query: str = "") -> URL:
    """The provider URL for a canonical `rest` under `base_url`'s path, built already encoded
    so that neither yarl nor the HTTP client re-normalises it. `query` is passed on as given,
    with only characters that cannot appear in a query string escaped."""
    if rest and path_problem("/" + rest) is not None:
        raise ValueError(f"not a canonical path: {rest!r}")
    scheme, authority, base_path = _base(base_url)
    return URL.build(scheme=scheme, authority=authority,
                     path=f"{base_path}/{rest}" if rest else base_path or "/",
                     query_string=quote(query, safe=_QUERY_SAFE), encoded=True)


def header_problem(headers: Mapping[str, str]) -> tuple[str, str] | None:
    """(header name, why) for the first header the proxy refuses, or None.

    aiohttp decodes header bytes with `surrogateescape`, so a byte that is not UTF-8 shows up
    as a lone surrogate; such a value must never reach a log line or the store. Attribution
    headers become budget scopes and record fields: bounded and printable."""
    for name, value in headers.items():
        if not value.isascii():
            try:
                value.encode("utf-8")
            except UnicodeEncodeError:
                return name, "is not valid UTF-8"
    for name in ATTRIBUTION_HEADERS:
        given = headers.get(name)
        if given is None:
            continue
        if len(given) > MAX_ATTRIBUTION_CHARS:
            return name, f"is longer than {MAX_ATTRIBUTION_CHARS} characters"
        if not given.isprintable():
            return name, "has control or non-printable characters"
    return None
