"""What every admin route module shares: JSON responses, error shape, body validation, and
the access check.

Bodies are validated with the same pydantic models the store keeps; a bad field answers 422
naming the field and the reason: `{"error": {"type", "message", "details": [{field, reason}]}}`.
"""

from __future__ import annotations

import hmac
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

import orjson
from aiohttp import web
from pydantic import BaseModel, ValidationError

from budget_proxy.appkeys import SETTINGS
from budget_proxy.models import INPUT

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]
READ_METHODS = frozenset({"GET", "HEAD", "OPTIONS"})
VIRTUAL_KEY_PREFIX = "bp-"
# POSTs that only compute an answer: the viewer token may call them
READ_ONLY_POSTS = frozenset({
    "/api/usage/check", "/api/assistant/analyze", "/api/assistant/optimize",
    "/api/assistant/recommend-model", "/api/prices/calculate",
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


def api_error(status: int, kind: str, message: str, details: Any = None) -> web.Response:
    error: dict[str, Any] = {"type": kind, "message": message}
    if details is not None:
        error["details"] = details
    return json_response({"error": error}, status)


def validation_error(exc: ValidationError) -> web.Response:
    details = [
        {"field": ".".join(str(p) for p in err["loc"]), "reason": err["msg"]}
        for err in exc.errors(include_url=False)
    ]
    summary = "; ".join(f"{d['field'] or 'body'}: {d['reason']}" for d in details)
    return api_error(422, "validation_error", summary, details)


def _token_ok(presented: str, expected: str | None) -> bool:
    return expected is not None and hmac.compare_digest(presented.encode(), expected.encode())


@web.middleware
async def auth_middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
    """With BUDGET_ADMIN_TOKEN set, `/api` mutations need it; the viewer token may only read."""
    if not request.path.startswith("/api/"):
        return await handler(request)
    auth = request.headers.get("Authorization", "")
    presented = auth[7:] if auth.startswith("Bearer ") else ""
    if presented.startswith(VIRTUAL_KEY_PREFIX) and not _public(request.path):
        # data-plane keys spend budgets through the proxy routes; they never administer them
        return api_error(403, "forbidden", "virtual keys (bp-...) cannot call the admin API")
    settings = request.app[SETTINGS]
    if settings.admin_token is None:
        return await handler(request)
    is_admin = _token_ok(presented, settings.admin_token)
    is_viewer = _token_ok(presented, settings.viewer_token)
    if request.method in READ_METHODS or request.path in READ_ONLY_POSTS:
        if settings.viewer_token is None or is_admin or is_viewer or _public(request.path):
            return await handler(request)
        return api_error(401, "unauthorized", "a viewer or admin token is required")
    if is_admin:
        return await handler(request)
    if is_viewer:
        return api_error(403, "forbidden", "the viewer token cannot change anything")
    return api_error(401, "unauthorized", "Authorization: Bearer <BUDGET_ADMIN_TOKEN> required")


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
