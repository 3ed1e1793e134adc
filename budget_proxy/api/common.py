"""What every admin route module shares: JSON responses, error shape, body validation, the
access check, and the middlewares of the admin sub-application.

Bodies are validated with the same pydantic models the store keeps; a bad field answers 422
naming the field and the reason: `{"error": {"type", "message", "details": [{field, reason}]}}`.
Every admin answer has that shape, errors of the router (404, 405, 413), an unavailable store
(503 `store_unavailable`) and unexpected failures (500, logged with the traceback, never in
the body) included.
"""

from __future__ import annotations

import asyncio
import hmac
import logging
from collections.abc import Awaitable, Callable, Mapping
from typing import Any, Literal, TypeVar

import orjson
from aiohttp import web
from pydantic import BaseModel, ValidationError

from budget_proxy.appkeys import PROXY, SETTINGS
from budget_proxy.config import Settings
from budget_proxy.models import INPUT
from budget_proxy.store.base import StoreError

log = logging.getLogger(__name__)

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]
Role = Literal["admin", "viewer", "none"]
STORE_RETRY_AFTER_S = 5  # what a 503 tells clients to wait before retrying
HTTP_ERROR_TYPES = {400: "bad_request", 404: "not_found", 405: "method_not_allowed",
                    413: "payload_too_large"}
READ_METHODS = frozenset({"GET", "HEAD", "OPTIONS"})
VIRTUAL_KEY_PREFIX = "bp-"
# POSTs that only compute an answer: the viewer token may call them
READ_ONLY_POSTS = frozenset({
    "/api/usage/check", "/api/assistant/analyze", "/api/assistant/optimize",
    "/api/assistant/recommend-model", "/api/prices/calculate",
    # the handler lets only the admin token run what changes budgets
    "/api/mcp", "/api/assistant/chat",
})
M = TypeVar("M", bound=BaseModel)


def json_response(data: Any, status: int = 200) -> web.Response:
    return web.Response(
        body=orjson.dumps(data, default=_default), status=status, content_type="application/json"
    )


def _default(value: Any) -> Any:
    if isinstance(value, BaseModel):
        return value.model_dump(mode="json")
    raise TypeError


def api_error(status: int, kind: str, message: str, details: Any = None,
              headers: Mapping[str, str] | None = None) -> web.Response:
    error: dict[str, Any] = {"type": kind, "message": message}
    if details is not None:
        error["details"] = details
    response = json_response({"error": error}, status)
    if headers:
        response.headers.update(headers)
    return response


def store_unavailable() -> web.Response:
    return api_error(503, "store_unavailable", "the budget store is unavailable; retry later",
                     headers={"Retry-After": str(STORE_RETRY_AFTER_S)})


@web.middleware
async def error_middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
    """The admin API's one error boundary: router and framework errors as JSON in the API's
    shape, `StoreError` as 503, anything else as a 500 whose traceback goes to the log only."""
    try:
        return await handler(request)
    except web.HTTPException as exc:
        if exc.status < 400:
            raise
        headers = {"Allow": exc.headers["Allow"]} if "Allow" in exc.headers else None
        kind = HTTP_ERROR_TYPES.get(exc.status, "http_error")
        message = f"no admin route {request.path}" if exc.status == 404 else exc.reason
        if exc.status == 405:
            message = f"{request.method} is not allowed on {request.path}"
        return api_error(exc.status, kind, message, headers=headers)
    except StoreError as exc:
        log.warning("admin %s %s: store unavailable: %s", request.method, request.path, exc)
        return store_unavailable()
    except (asyncio.CancelledError, ConnectionResetError):
        raise
    except Exception:
        log.exception("admin %s %s failed", request.method, request.path)
        return api_error(500, "internal_error",
                         "internal error; the proxy's log has the details")


def validation_error(exc: ValidationError) -> web.Response:
    details = [
        {"field": ".".join(str(p) for p in err["loc"]), "reason": err["msg"]}
        for err in exc.errors(include_url=False)
    ]
    summary = "; ".join(f"{d['field'] or 'body'}: {d['reason']}" for d in details)
    return api_error(422, "validation_error", summary, details)


def _token_ok(presented: str, expected: str | None) -> bool:
    return expected is not None and hmac.compare_digest(presented.encode(), expected.encode())


def presented_token(request: web.Request, *, query: bool = False) -> str:
    """The bearer token of a request; with `query`, `?token=` too (browsers cannot set
    headers on a WebSocket)."""
    auth = request.headers.get("Authorization", "")
    if auth.startswith("Bearer "):
        return auth[7:]
    return request.query.get("token", "") if query else ""


def token_role(presented: str, settings: Settings) -> Role:
    """Which configured token was presented: `none` when it is neither (or none is set)."""
    if presented and _token_ok(presented, settings.admin_token):
        return "admin"
    if presented and _token_ok(presented, settings.viewer_token):
        return "viewer"
    return "none"


@web.middleware
async def auth_middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
    """With BUDGET_ADMIN_TOKEN set, admin mutations need it; the viewer token may only read
    (and, when set, is needed to read). Installed on the admin sub-application only."""
    presented = presented_token(request)
    if presented.startswith(VIRTUAL_KEY_PREFIX) and not _public(request.path):
        # data-plane keys spend budgets through the proxy routes; they never administer them
        return api_error(403, "forbidden", "virtual keys (bp-...) cannot call the admin API")
    settings = request.config_dict[SETTINGS]
    if settings.admin_token is None:
        return await handler(request)
    role = token_role(presented, settings)
    is_admin, is_viewer = role == "admin", role == "viewer"
    if request.method in READ_METHODS or request.path in READ_ONLY_POSTS:
        if settings.viewer_token is None or is_admin or is_viewer or _public(request.path):
            return await handler(request)
        return api_error(401, "unauthorized", "a viewer or admin token is required")
    if is_admin:
        return await handler(request)
    if is_viewer:
        return api_error(403, "forbidden", "the viewer token cannot change anything")
    return api_error(401, "unauthorized", "Authorization: Bearer <BUDGET_ADMIN_TOKEN> required")


@web.middleware
async def read_your_writes(request: web.Request, handler: Handler) -> web.StreamResponse:
    """Admin reads wait for this replica's settlements in flight (they run after responses)."""
    proxy = request.config_dict.get(PROXY)
    if proxy is not None:
        await proxy.settled()
    return await handler(request)


def _public(path: str) -> bool:
    return path in ("/api/health", "/api/openapi.json") or path == "/api/docs" or (
        path.startswith("/api/docs/"))


async def read_model(
    request: web.Request, model: type[M], *, optional: bool = False
) -> M | web.Response:
    """Parse and validate a JSON body, or the error response to return. With `optional`,
    an empty body stands for `{}`."""
    if optional and not (await request.read()).strip():
        return model()
    try:
        data = await request.json(loads=orjson.loads)
    except (ValueError, orjson.JSONDecodeError) as exc:
        return api_error(400, "invalid_json", f"body is not valid JSON: {exc}")
    if not isinstance(data, dict):
        return api_error(400, "invalid_json", "body must be a JSON object")
    try:
        return model.model_validate(data, context=INPUT)
    except ValidationError as exc:
        return validation_error(exc)


def read_query(request: web.Request, model: type[M]) -> M | web.Response:
    """Validate the query string with `model`, or the 422 response naming the field."""
    try:
        return model.model_validate(dict(request.query), context=INPUT)
    except ValidationError as exc:
        return validation_error(exc)
