"""Python client of the budget-proxy admin API: `BudgetClient` (sync) and `AsyncBudgetClient`.

    from budget_proxy.client import BudgetClient

    client = BudgetClient()  # BUDGET_URL / BUDGET_ADMIN_TOKEN, default http://localhost:8013
    allowed, info = client.check_budget(provider="anthropic", model="claude-3-opus",
                                        input_text="Hello, world!", component="my-component")
    client.record_completion(provider="anthropic", model="claude-3-opus",
                             input_text="Hello, world!", output_text="Hi there!",
                             component="my-component")

Results are the pydantic models the server validates and answers with (`UsageCheckResult`,
`BudgetAllocation`, ...). Errors are `BudgetError` subclasses: `BudgetConnectionError`
(proxy unreachable), `BudgetAuthError` (401/403), `BudgetValidationError` (400/422, with the
fields named in `details`), `BudgetNotFoundError`, `BudgetConflictError`,
`BudgetStoreUnavailableError` (503, with `retry_after_s`).

Both clients build every call with the same functions (`_calls`), so they cannot drift apart.
`request()` sends any other admin API call over the same transport and error mapping (the
`budget` CLI is built on it).
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import datetime
from typing import Any, Generic, TypeVar

import httpx
import orjson
from pydantic import TypeAdapter

from budget_proxy.allocations import BudgetAllocation
from budget_proxy.models import Alert, Budget, BudgetPolicy, UsageRecord
from budget_proxy.schemas import (
    Analysis,
    BudgetDetail,
    Deleted,
    HealthStatus,
    ModelRecommendation,
    Optimization,
    PolicyWritten,
    RecordedUsage,
    Report,
    StatusReport,
    UsageCheckResult,
    UsageSummary,
)
from budget_proxy.virtual_keys import KeyCreated, VirtualKey

DEFAULT_URL = "http://localhost:8013"
DEFAULT_TIMEOUT_S = 30.0
T = TypeVar("T")


class BudgetError(Exception):
    """The proxy refused or failed a call (or could not be reached)."""

    def __init__(self, message: str, status: int | None = None, error_type: str | None = None,
                 details: list[dict[str, str]] | None = None,
                 retry_after_s: float | None = None) -> None:
        super().__init__(message)
        self.status = status
        self.error_type = error_type
        self.details = details or []
        self.retry_after_s = retry_after_s  # the answer's Retry-After, when it had one


class BudgetConnectionError(BudgetError):
    """The proxy could not be reached."""


class BudgetAuthError(BudgetError):
    """401/403: missing, wrong or insufficient token."""


class BudgetValidationError(BudgetError):
    """400/422: a field is invalid; `details` names each field and the reason."""


class BudgetNotFoundError(BudgetError):
    """404."""


class BudgetConflictError(BudgetError):
    """409: e.g. an allocation the budgets cannot cover, a budget id already taken."""


class BudgetStoreUnavailableError(BudgetError):
    """503: the proxy is up but its budget store is not; retry after a while."""


_BY_STATUS: dict[int, type[BudgetError]] = {
    400: BudgetValidationError, 401: BudgetAuthError, 403: BudgetAuthError,
    404: BudgetNotFoundError, 409: BudgetConflictError, 422: BudgetValidationError,
    503: BudgetStoreUnavailableError,
}


@dataclass(frozen=True, slots=True)
class _Call(Generic[T]):
    """One API call: what to send and how to read the answer."""

    method: str
    path: str
    parse: Callable[[httpx.Response], T]
    params: dict[str, Any] | None = None
    json: Any = None


def _clean(values: dict[str, Any]) -> dict[str, Any]:
    """A JSON body without the unset (None) fields."""
    return {k: (v.isoformat() if isinstance(v, datetime) else v)
            for k, v in values.items() if v is not None}


def _params(values: dict[str, Any]) -> dict[str, Any] | None:
    """Query parameters: unset ones dropped, booleans as the server reads them."""
    out = {k: ("true" if v else "false") if isinstance(v, bool) else v
           for k, v in _clean(values).items()}
    return out or None


def _model(model: Any) -> Callable[[httpx.Response], Any]:
    adapter: TypeAdapter[Any] = TypeAdapter(model)
    return lambda resp: adapter.validate_python(resp.json())


def _text(resp: httpx.Response) -> str:
    return resp.text


def _check(resp: httpx.Response) -> tuple[bool, UsageCheckResult]:
    result = UsageCheckResult.model_validate(resp.json())
    return result.allowed, result


def _json(resp: httpx.Response) -> Any:
    """The answer's JSON; None when it has no body."""
    return resp.json() if resp.content else None


def _retry_after_s(resp: httpx.Response) -> float | None:
    try:
        return float(resp.headers["Retry-After"])
    except (KeyError, ValueError):
        return None


def _raise_for(resp: httpx.Response) -> None:
    """The one mapping of the admin API's error answers to `BudgetError`s."""
    if resp.status_code < 400:
        return
    try:
        err = resp.json().get("error", {})
    except (ValueError, AttributeError):
        err = {}
    if not isinstance(err, dict):
        err = {"message": str(err)}
    message = err.get("message") or resp.text or f"HTTP {resp.status_code}"
    if resp.status_code == 503:
        message = "budget store unavailable: " + message
    cls = _BY_STATUS.get(resp.status_code, BudgetError)
    raise cls(f"{resp.status_code}: {message}", resp.status_code, err.get("type"),
              err.get("details"), _retry_after_s(resp))


class _calls:  # a namespace of call builders shared by both clients
    @staticmethod
    def check_budget(provider: str, model: str, input_text: str | None, component: str | None,
                     **kw: Any) -> _Call[tuple[bool, UsageCheckResult]]:
        body = _clean({"provider": provider, "model": model, "input_text": input_text,
                       "component": component, **kw})
        return _Call("POST", "/api/usage/check", _check, json=body)

    @staticmethod
    def record_completion(provider: str, model: str, input_text: str | None,
                          output_text: str | None, component: str | None,
                          **kw: Any) -> _Call[RecordedUsage]:
        body = _clean({"provider": provider, "model": model, "input_text": input_text,
                       "output_text": output_text, "component": component, **kw})
        return _Call("POST", "/api/usage/record", _model(RecordedUsage), json=body)

    @staticmethod
    def set_limit(period: str, limit: float, *, tokens: bool, policy_type: str,
                  **scope: Any) -> _Call[PolicyWritten]:
        body = _clean({"period": period, "type": policy_type, **scope})
        body["token_limit" if tokens else "cost_limit"] = int(limit) if tokens else limit
        return _Call("POST", "/api/policies", _model(PolicyWritten), json=body)

    @staticmethod
    def allocate(context_id: str, component: str, tokens: int, **kw: Any
                 ) -> _Call[BudgetAllocation]:
        body = _clean({"context_id": context_id, "component": component,
                       "tokens_allocated": tokens, **kw})
        return _Call("POST", "/api/allocations", _model(BudgetAllocation), json=body)

    @staticmethod
    def get(path: str, model: Any, **params: Any) -> _Call[Any]:
        return _Call("GET", path, _model(model), params=_params(params))


class _Base:
    def __init__(self, url: str | None, token: str | None, timeout_s: float) -> None:
        self.url = (url or os.environ.get("BUDGET_URL") or DEFAULT_URL).rstrip("/")
        token = token if token is not None else os.environ.get("BUDGET_ADMIN_TOKEN")
        self.headers = {"Authorization": f"Bearer {token}"} if token else {}
        self.timeout_s = timeout_s

    def _connection_error(self, exc: httpx.HTTPError) -> BudgetConnectionError:
        return BudgetConnectionError(f"cannot reach budget-proxy at {self.url}: {exc}")


class BudgetClient(_Base):
    """Synchronous client. Use as a context manager, or call `close()`."""

    def __init__(self, url: str | None = None, token: str | None = None, *,
                 timeout_s: float = DEFAULT_TIMEOUT_S,
                 transport: httpx.BaseTransport | None = None) -> None:
        super().__init__(url, token, timeout_s)
        self._http = httpx.Client(base_url=self.url, headers=self.headers, timeout=timeout_s,
                                  transport=transport)

    def __enter__(self) -> BudgetClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        self._http.close()

    def _run(self, call: _Call[T]) -> T:
        try:
            resp = self._http.request(call.method, call.path, params=call.params, json=call.json)
        except httpx.HTTPError as exc:
            raise self._connection_error(exc) from exc
        _raise_for(resp)
        return call.parse(resp)

    def request(self, method: str, path: str, *, params: dict[str, Any] | None = None,
                json: Any = None) -> Any:
        """Any admin API call (`path` under the proxy's URL): its JSON answer, None when it
        has none. `json` is sent as given; unset `params` are dropped."""
        return self._run(_Call(method, path, _json, params=_params(params or {}), json=json))

    def update_prices(self) -> Iterator[dict[str, Any]]:
        """Fetch prices from the configured sources now: the progress events as the proxy
        sends them, the last one `{"type": "report", "report": {...}}`."""
        try:
            with self._http.stream("POST", "/api/prices/update", params={"stream": "true"},
                                   headers={"Accept": "application/x-ndjson"},
                                   timeout=httpx.Timeout(self.timeout_s, read=None)) as resp:
                if resp.status_code >= 400:
                    resp.read()
                    _raise_for(resp)
                for line in resp.iter_lines():
                    if line.strip():
                        yield orjson.loads(line)
        except httpx.HTTPError as exc:
            raise self._connection_error(exc) from exc

    # the seed README's two calls --------------------------------------------------------
    def check_budget(self, provider: str, model: str, input_text: str | None = None,
                     component: str | None = None, **kw: Any) -> tuple[bool, UsageCheckResult]:
        """(allowed, info): would this request be allowed, and what would remain? Keyword
        arguments: input_tokens, max_output_tokens, task_type, session, task, context_id,
        allocation_id."""
        return self._run(_calls.check_budget(provider, model, input_text, component, **kw))

    def record_completion(self, provider: str, model: str, input_text: str | None = None,
                          output_text: str | None = None, component: str | None = None,
                          **kw: Any) -> RecordedUsage:
        """Record a call made directly to a provider. Keyword arguments: input_tokens,
        output_tokens, cached_input_tokens, input_cost, output_cost, context_id,
        allocation_id, session_id, task_id, task_type, metadata."""
        return self._run(_calls.record_completion(provider, model, input_text, output_text,
                                                  component, **kw))

    # admin --------------------------------------------------------------------------------
    def health(self) -> HealthStatus:
        return self._run(_calls.get("/api/health", HealthStatus))

    def status(self) -> StatusReport:
        return self._run(_calls.get("/api/status", StatusReport))

    def set_limit(self, period: str, limit: float, *, tokens: bool = False,
                  policy_type: str = "hard_limit", **scope: Any) -> PolicyWritten:
        """A policy: scope keywords provider, component, model, tier, task_type, name,
        fallback_model, budget_id, warning_threshold, action_threshold."""
        return self._run(_calls.set_limit(period, limit, tokens=tokens,
                                          policy_type=policy_type, **scope))

    def list_policies(self) -> list[BudgetPolicy]:
        return self._run(_calls.get("/api/policies", list[BudgetPolicy]))

    def delete_policy(self, policy_id: str) -> Deleted:
        return self._run(_Call("DELETE", f"/api/policies/{policy_id}", _model(Deleted)))

    def list_budgets(self) -> list[Budget]:
        return self._run(_calls.get("/api/budgets", list[Budget]))

    def create_budget(self, name: str, **fields: Any) -> Budget:
        return self._run(_Call("POST", "/api/budgets", _model(Budget),
                               json=_clean({"name": name, **fields})))

    def get_budget(self, budget_id: str) -> BudgetDetail:
        return self._run(_calls.get(f"/api/budgets/{budget_id}", BudgetDetail))

    def delete_budget(self, budget_id: str, cascade: bool = False) -> Deleted:
        return self._run(_Call("DELETE", f"/api/budgets/{budget_id}", _model(Deleted),
                               params=_params({"cascade": cascade})))

    def allocate(self, context_id: str, component: str, tokens: int,
                 **kw: Any) -> BudgetAllocation:
        """Hold tokens for a context. Keywords: tier, provider, model, task_type, priority,
        budget_id, ttl_s, expiration_time, metadata."""
        return self._run(_calls.allocate(context_id, component, tokens, **kw))

    def list_allocations(self, **filters: Any) -> list[BudgetAllocation]:
        """Filters: component, context_id, active."""
        return self._run(_calls.get("/api/allocations", list[BudgetAllocation], **filters))

    def get_allocation(self, allocation_id: str) -> BudgetAllocation:
        return self._run(_calls.get(f"/api/allocations/{allocation_id}", BudgetAllocation))

    def release_allocation(self, allocation_id: str) -> BudgetAllocation:
        return self._run(_Call("POST", f"/api/allocations/{allocation_id}/release",
                               _model(BudgetAllocation)))

    def get_usage(self, period: str = "daily", days: int | None = None,
                  **filters: Any) -> UsageSummary:
        """Filters: provider, component, model, group_by ("provider,model")."""
        return self._run(_calls.get("/api/usage", UsageSummary, period=period, days=days,
                                    **filters))

    def usage_records(self, **filters: Any) -> list[UsageRecord]:
        return self._run(_calls.get("/api/usage/records", list[UsageRecord], **filters))

    def report(self, period: str = "daily", days: int | None = None, **filters: Any) -> Report:
        return self._run(_calls.get("/api/reports", Report, period=period, days=days,
                                    **filters))

    def report_csv(self, period: str = "daily", days: int | None = None, **filters: Any) -> str:
        return self._run(_Call("GET", "/api/reports", _text, params=_params(
            {"period": period, "days": days, "format": "csv", **filters})))

    def list_alerts(self, **filters: Any) -> list[Alert]:
        """Filters: acknowledged, severity, type, policy_id, limit, offset."""
        return self._run(_calls.get("/api/alerts", list[Alert], **filters))

    def acknowledge_alert(self, alert_id: str, by: str | None = None) -> Alert:
        return self._run(_Call("POST", f"/api/alerts/{alert_id}/acknowledge", _model(Alert),
                               json=_clean({"acknowledged_by": by})))

    def create_key(self, component: str, **kw: Any) -> KeyCreated:
        """Mint a virtual key; the result's `secret` is the only time it is shown."""
        return self._run(_Call("POST", "/api/keys", _model(KeyCreated),
                               json=_clean({"component": component, **kw})))

    def list_keys(self) -> list[VirtualKey]:
        return self._run(_calls.get("/api/keys", list[VirtualKey]))

    def revoke_key(self, key_id: str) -> VirtualKey:
        return self._run(_Call("DELETE", f"/api/keys/{key_id}", _model(VirtualKey)))

    def analyze(self, period: str = "daily", days: int = 30, **kw: Any) -> Analysis:
        return self._run(_Call("POST", "/api/assistant/analyze", _model(Analysis),
                               json=_clean({"period": period, "days": days, **kw})))

    def optimize(self, period: str = "daily", days: int = 30, **kw: Any) -> Optimization:
        return self._run(_Call("POST", "/api/assistant/optimize", _model(Optimization),
                               json=_clean({"period": period, "days": days, **kw})))

    def recommend_model(self, **kw: Any) -> ModelRecommendation:
        return self._run(_Call("POST", "/api/assistant/recommend-model",
                               _model(ModelRecommendation), json=_clean(kw)))


class AsyncBudgetClient(_Base):
    """The same operations as `BudgetClient`, awaitable. Use `async with`, or `aclose()`."""

    def __init__(self, url: str | None = None, token: str | None = None, *,
                 timeout_s: float = DEFAULT_TIMEOUT_S,
                 transport: httpx.AsyncBaseTransport | None = None) -> None:
        super().__init__(url, token, timeout_s)
        self._http = httpx.AsyncClient(base_url=self.url, headers=self.headers,
                                       timeout=timeout_s, transport=transport)

    async def __aenter__(self) -> AsyncBudgetClient:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()

    async def aclose(self) -> None:
        await self._http.aclose()

    async def _run(self, call: _Call[T]) -> T:
        try:
            resp = await self._http.request(call.method, call.path, params=call.params,
                                            json=call.json)
        except httpx.HTTPError as exc:
            raise self._connection_error(exc) from exc
        _raise_for(resp)
        return call.parse(resp)

    async def request(self, method: str, path: str, *, params: dict[str, Any] | None = None,
                      json: Any = None) -> Any:
        """Any admin API call: its JSON answer, None when it has none (see `BudgetClient`)."""
        return await self._run(_Call(method, path, _json, params=_params(params or {}),
                                     json=json))

    async def check_budget(self, provider: str, model: str, input_text: str | None = None,
                           component: str | None = None,
                           **kw: Any) -> tuple[bool, UsageCheckResult]:
        return await self._run(_calls.check_budget(provider, model, input_text, component,
                                                   **kw))

    async def record_completion(self, provider: str, model: str, input_text: str | None = None,
                                output_text: str | None = None, component: str | None = None,
                                **kw: Any) -> RecordedUsage:
        return await self._run(_calls.record_completion(provider, model, input_text,
                                                        output_text, component, **kw))

    async def health(self) -> HealthStatus:
        return await self._run(_calls.get("/api/health", HealthStatus))

    async def status(self) -> StatusReport:
        return await self._run(_calls.get("/api/status", StatusReport))

    async def set_limit(self, period: str, limit: float, *, tokens: bool = False,
                        policy_type: str = "hard_limit", **scope: Any) -> PolicyWritten:
        return await self._run(_calls.set_limit(period, limit, tokens=tokens,
                                                policy_type=policy_type, **scope))

    async def list_policies(self) -> list[BudgetPolicy]:
        return await self._run(_calls.get("/api/policies", list[BudgetPolicy]))

    async def delete_policy(self, policy_id: str) -> Deleted:
        return await self._run(_Call("DELETE", f"/api/policies/{policy_id}", _model(Deleted)))

    async def list_budgets(self) -> list[Budget]:
        return await self._run(_calls.get("/api/budgets", list[Budget]))

    async def create_budget(self, name: str, **fields: Any) -> Budget:
        return await self._run(_Call("POST", "/api/budgets", _model(Budget),
                                     json=_clean({"name": name, **fields})))

    async def get_budget(self, budget_id: str) -> BudgetDetail:
        return await self._run(_calls.get(f"/api/budgets/{budget_id}", BudgetDetail))

    async def delete_budget(self, budget_id: str, cascade: bool = False) -> Deleted:
        return await self._run(_Call("DELETE", f"/api/budgets/{budget_id}", _model(Deleted),
                                     params=_params({"cascade": cascade})))

    async def allocate(self, context_id: str, component: str, tokens: int,
                       **kw: Any) -> BudgetAllocation:
        return await self._run(_calls.allocate(context_id, component, tokens, **kw))

    async def list_allocations(self, **filters: Any) -> list[BudgetAllocation]:
        return await self._run(_calls.get("/api/allocations", list[BudgetAllocation],
                                          **filters))

    async def get_allocation(self, allocation_id: str) -> BudgetAllocation:
        return await self._run(_calls.get(f"/api/allocations/{allocation_id}",
                                          BudgetAllocation))

    async def release_allocation(self, allocation_id: str) -> BudgetAllocation:
        return await self._run(_Call("POST", f"/api/allocations/{allocation_id}/release",
                                     _model(BudgetAllocation)))

    async def get_usage(self, period: str = "daily", days: int | None = None,
                        **filters: Any) -> UsageSummary:
        return await self._run(_calls.get("/api/usage", UsageSummary, period=period,
                                          days=days, **filters))

    async def usage_records(self, **filters: Any) -> list[UsageRecord]:
        return await self._run(_calls.get("/api/usage/records", list[UsageRecord], **filters))

    async def report(self, period: str = "daily", days: int | None = None,
                     **filters: Any) -> Report:
        return await self._run(_calls.get("/api/reports", Report, period=period, days=days,
                                          **filters))

    async def report_csv(self, period: str = "daily", days: int | None = None,
                         **filters: Any) -> str:
        return await self._run(_Call("GET", "/api/reports", _text, params=_params(
            {"period": period, "days": days, "format": "csv", **filters})))

    async def list_alerts(self, **filters: Any) -> list[Alert]:
        return await self._run(_calls.get("/api/alerts", list[Alert], **filters))

    async def acknowledge_alert(self, alert_id: str, by: str | None = None) -> Alert:
        return await self._run(_Call("POST", f"/api/alerts/{alert_id}/acknowledge",
                                     _model(Alert), json=_clean({"acknowledged_by": by})))

    async def create_key(self, component: str, **kw: Any) -> KeyCreated:
        return await self._run(_Call("POST", "/api/keys", _model(KeyCreated),
                                     json=_clean({"component": component, **kw})))

    async def list_keys(self) -> list[VirtualKey]:
        return await self._run(_calls.get("/api/keys", list[VirtualKey]))

    async def revoke_key(self, key_id: str) -> VirtualKey:
        return await self._run(_Call("DELETE", f"/api/keys/{key_id}", _model(VirtualKey)))

    async def analyze(self, period: str = "daily", days: int = 30, **kw: Any) -> Analysis:
        return await self._run(_Call("POST", "/api/assistant/analyze", _model(Analysis),
                                     json=_clean({"period": period, "days": days, **kw})))

    async def optimize(self, period: str = "daily", days: int = 30,
                       **kw: Any) -> Optimization:
        return await self._run(_Call("POST", "/api/assistant/optimize", _model(Optimization),
                                     json=_clean({"period": period, "days": days, **kw})))

    async def recommend_model(self, **kw: Any) -> ModelRecommendation:
        return await self._run(_Call("POST", "/api/assistant/recommend-model",
                                     _model(ModelRecommendation), json=_clean(kw)))


__all__ = [
    "AsyncBudgetClient", "BudgetAuthError", "BudgetClient", "BudgetConflictError",
    "BudgetConnectionError", "BudgetError", "BudgetNotFoundError", "BudgetStoreUnavailableError",
    "BudgetValidationError",
]
