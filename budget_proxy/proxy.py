"""The inline path: identify, parse, estimate, reserve, forward, tap usage, settle, record.

`Proxy.handle` is the aiohttp handler for every provider route. The proxy knows no API
family: the provider's adapter (`budget_proxy.providers`) says which calls are metered and
what each asks for, and reads its usage. Metered calls hold a reservation from before the
upstream call until settlement; the settlement runs in a task the handler only awaits
through `asyncio.shield`, so a client hanging up (and the handler being cancelled) cannot
lose it. Everything else under a provider's prefix is free (forwarded as is) or refused
(`budget_proxy.routing` decides which, from the canonical path).
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from datetime import datetime
from typing import Any
from zoneinfo import ZoneInfo

import aiohttp
from aiohttp import web
from yarl import URL

from budget_proxy import allocations, routing, tokens
from budget_proxy.config import ProviderConfig, Settings
from budget_proxy.enforcement import (
    CounterLine,
    RequestScope,
    ReserveResult,
    Totals,
    counter_lines,
    rate_remaining,
    shadow_refusals,
    soft_limit_move,
    tightest_remaining,
    warnings,
)
from budget_proxy.models import MAX_CALL_TOKENS, PolicyType, UsageRecord, new_id, nusd_to_usd
from budget_proxy.periods import seconds_until
from budget_proxy.policy_cache import PolicyCache
from budget_proxy.pricing import ModelPrice, PriceCatalog
from budget_proxy.providers import Adapter, Plan, RequestProblem, adapter_for
from budget_proxy.routing import Classified, Refusal, RouteClass
from budget_proxy.store.base import (
    Reservation,
    Store,
    StoreError,
    intent_json,
    record_id_of,
)
from budget_proxy.store.journal import SettlementJournaled
from budget_proxy.usage import Usage, cost_of, worst_case_nusd
from budget_proxy.wire import DEFAULT_MAX_OUTPUT_TOKENS, StreamParser, UsageTap

log = logging.getLogger(__name__)

HOP_BY_HOP = frozenset({
    "connection", "keep-alive", "proxy-authenticate", "proxy-authorization", "te", "trailer",
    "trailers", "transfer-encoding", "upgrade", "host", "content-length", "accept-encoding",
})
# client credentials never travel upstream; the proxy's own key replaces them
CREDENTIAL_HEADERS = frozenset({"authorization", "x-api-key", "api-key", "x-goog-api-key"})
RESPONSE_DROP = frozenset({
    "connection", "keep-alive", "transfer-encoding", "content-length", "content-encoding",
    "server", "date",
})


@dataclass(frozen=True, slots=True)
class Attribution:
    """Who pays: from a virtual key, the attribution headers, or the sidecar default."""

    component: str
    session: str | None = None
    task: str | None = None
    task_type: str | None = None
    context_id: str | None = None
    allocation_id: str | None = None
    key_id: str | None = None  # the virtual key, when one identified the caller


# the caller a virtual key identified, set by `Proxy.identify` for `Proxy.attribution`
CALLER = web.RequestKey("budget_proxy_caller", Attribution)


@dataclass(frozen=True, slots=True)
class Call:
    """What a call's intent records besides its amounts (see `Proxy.reservation_for`)."""

    provider: str
    endpoint: str
    model: str
    requested_model: str
    who: Attribution
    streamed: bool


@dataclass(slots=True)
class Metered:
    """Everything the settlement of one metered call needs."""

    provider: str
    api: str
    endpoint: str
    route: str
    model: str
    requested_model: str
    price: ModelPrice
    attribution: Attribution
    reservation: Reservation
    lines: tuple[CounterLine, ...]
    input_tokens_estimate: int
    streamed: bool
    started_at: float  # perf_counter() when the request arrived
    # timing points (perf_counter) for the proxy's own overhead vs the upstream's time
    upstream_sent_at: float = 0.0
    upstream_headers_at: float = 0.0
    first_chunk_at: float = 0.0
    upstream_done_at: float = 0.0
    finished_at: float = 0.0
    status: int = 0
    outcome: str = "error"  # ok | aborted | error (upstream error or unreachable)
    extra_meta: dict[str, Any] = field(default_factory=dict)

    @property
    def overhead_s(self) -> float:
        """Time spent in the proxy itself: before the upstream call and after its end."""
        if not self.upstream_sent_at:
            return 0.0
        before = self.upstream_sent_at - self.started_at
        after = max(0.0, self.finished_at - (self.upstream_done_at or self.finished_at))
        return before + after


# hooks the rest of the application attaches (metrics, events, alerts). They run after the
# response is complete, must not block, and schedule their own tasks for any I/O.
FinishHook = Callable[[Metered, UsageRecord | None], None]  # record None: nothing charged
RefuseHook = Callable[[str, str, str], None]  # provider, policy_id, reason
StoreFailureHook = Callable[[str], None]  # operation (reserve, settle, release, ...)
ErrorResponseHook = Callable[[str, int, str], None]  # api, status, code: answered by the proxy
UnmeteredHook = Callable[[str, str], None]  # provider, method: forwarded unmetered (allow)


class Proxy:
    def __init__(
        self,
        settings: Settings,
        store: Store,
        catalog: PriceCatalog,
        policies: PolicyCache,
        session: aiohttp.ClientSession,
    ) -> None:
        self.settings = settings
        self.store = store
        self.catalog = catalog
        self.policies = policies
        self.session = session
        self.providers: dict[str, ProviderConfig] = settings.all_providers()
        self.tz = ZoneInfo(settings.timezone)
        self.background: set[asyncio.Task[Any]] = set()
        self.on_finish: list[FinishHook] = []
        self.on_refuse: list[RefuseHook] = []
        self.on_store_failure: list[StoreFailureHook] = []
        self.on_error_response: list[ErrorResponseHook] = []
        self.on_unmetered: list[UnmeteredHook] = []
        self._unmetered_logged: set[tuple[str, str, str]] = set()
        self.identify_key: Callable[[str], Attribution | None] | None = None

    # routing ------------------------------------------------------------------------------
    def resolve(self, request: web.Request) -> tuple[ProviderConfig, str, Classified]:
        """(provider, canonical path under its API root, route class), or a `Refusal`, before
        anything is read or forwarded. In order: a path that is not canonical (400
        invalid_path), no such provider (404), an unknown virtual key or a missing required
        one (401), a provider without its API key (503), a route that is neither metered nor
        free (403 unmetered_route, unless BUDGET_UNMETERED=allow)."""
        raw_path = request.rel_url.raw_path
        problem = routing.path_problem(raw_path)
        if problem is not None:
            raise Refusal(400, "invalid_path", f"{problem}; the request was not forwarded",
                          api=routing.api_for_path(self.providers, raw_path) or "openai")
        resolved = routing.resolve(self.providers, raw_path)
        if resolved is None:
            raise Refusal(404, "unknown_route", f"no provider route for {raw_path}")
        provider, rest = resolved
        self.identify(request, provider.api)
        adapter = adapter_for(provider.api)
        needs_key = adapter.needs_key if provider.key_required is None else provider.key_required
        if needs_key and not provider.api_key:
            where = (f"set {provider.api_key_env}" if provider.api_key_env else
                     f"set api_key_env in its [providers.{provider.name}] table")
            raise Refusal(503, "provider_key_missing", f"the budget proxy holds no API key for "
                          f"provider {provider.name} ({where}); the request was not forwarded",
                          api=provider.api, headers={"x-should-retry": "false"})
        websocket = "websocket" in request.headers.get("Upgrade", "").lower()
        route = routing.classify(provider.api, request.method, rest, websocket=websocket)
        if route.route_class is RouteClass.REFUSED:
            if self.settings.unmetered != "allow":
                raise Refusal(403, "unmetered_route", f"{request.method} {raw_path} is refused: "
                              f"{route.reason} by the budget proxy (BUDGET_UNMETERED=allow "
                              "forwards unmetered routes)", api=provider.api)
            self.unmetered(provider.name, request.method, rest)
        return provider, rest, route

    def unmetered(self, provider: str, method: str, rest: str) -> None:
        """BUDGET_UNMETERED=allow: counted every time, logged once per path shape."""
        for hook in self.on_unmetered:
            hook(provider, method)
        shape = (provider, method, routing.path_shape(rest))
        if shape not in self._unmetered_logged and len(self._unmetered_logged) < 1024:
            self._unmetered_logged.add(shape)
            log.warning("forwarding unmetered %s %s/%s (BUDGET_UNMETERED=allow); further calls "
                        "of this shape are not logged", method, provider, shape[2])

    def upstream_url(self, provider: ProviderConfig, rest: str, query: str) -> URL:
        """Under the provider's base path, exactly the canonical path that was classified."""
        return routing.upstream_url(provider.base_url, rest, query)

    def upstream_headers(self, request: web.Request, provider: ProviderConfig) -> dict[str, str]:
        headers = {
            k: v for k, v in request.headers.items()
            if (lk := k.lower()) not in HOP_BY_HOP and lk not in CREDENTIAL_HEADERS
            and not lk.startswith("x-budget-")
        }
        headers["Accept-Encoding"] = "identity"
        key = provider.api_key
        if key:
            headers.update(adapter_for(provider.api).auth_headers(key))
        return headers

    # identify -----------------------------------------------------------------------------
    def identify(self, request: web.Request, api: str) -> None:
        """The virtual key check of every proxy route (metered, free or refused): an unknown,
        revoked or expired `bp-` key is refused (401, provider format) rather than served
        anonymously; with BUDGET_REQUIRE_KEY a request without one is refused too."""
        secret = _virtual_key(request.headers)
        if secret is None:
            if self.settings.require_key:
                raise Refusal(401, "invalid_api_key", "this budget proxy requires a virtual key "
                              "(bp-...) as the API key (BUDGET_REQUIRE_KEY=true)", api=api)
            return
        caller = self.identify_key(secret) if self.identify_key is not None else None
        if caller is None:
            raise Refusal(401, "invalid_api_key", "unknown or revoked budget-proxy virtual key",
                          api=api)
        request[CALLER] = caller

    def attribution(self, request: web.Request) -> Attribution:
        """Who pays. A virtual key (`bp-...` in the header the client's SDK sends its API key
        in, checked by `identify`) names the component and cannot be overridden by headers;
        empty attribution headers count as absent."""
        h = request.headers
        from_key = request.get(CALLER)
        component = (from_key.component if from_key else None) or h.get(
            "X-Budget-Component") or self.settings.component
        return Attribution(
            component=component,
            session=h.get("X-Budget-Session") or None,
            task=h.get("X-Budget-Task") or None,
            task_type=h.get("X-Budget-Task-Type") or None,
            context_id=h.get("X-Budget-Context") or None,
            allocation_id=h.get("X-Budget-Allocation") or None,
        )

    # pricing ------------------------------------------------------------------------------
    def price_for(self, provider: str, model: str) -> ModelPrice | None:
        """The price in force (catalog overlaid with stored price versions); for a model it
        does not know, the BUDGET_UNKNOWN_PRICE rule: None under `refuse`, else the provider's
        ceiling price (never $0; `alert` also raises one alert per model). Cached."""
        return self.catalog.resolve_price(provider, model, self.settings.unknown_price)

    # handler ------------------------------------------------------------------------------
    async def handle(self, request: web.Request) -> web.StreamResponse:
        started_at = time.perf_counter()
        try:
            provider, rest, route = self.resolve(request)
        except Refusal as refusal:
            return self.error(refusal.api, refusal.status, refusal.message, code=refusal.code,
                              headers=refusal.headers or None)
        if route.route_class is RouteClass.METERED and route.endpoint is not None:
            return await self.metered(request, provider, rest, route.endpoint, started_at)
        return await self.pass_through(request, provider, rest)

    def error(self, api: str, status: int, message: str, *, code: str | None = None,
              headers: dict[str, str] | None = None) -> web.Response:
        for hook in self.on_error_response:
            hook(api, status, code or "")
        return web.Response(
            status=status, body=adapter_for(api).error_body(status, message, code=code),
            content_type="application/json", headers=headers,
        )

    async def read_body(self, request: web.Request, api: str) -> bytes | web.Response:
        limit = self.settings.max_body_bytes
        if request.content_length is not None and request.content_length > limit:
            return self.error(api, 413, f"request body exceeds {limit} bytes",
                              code="request_too_large")
        try:
            return await request.read()
        except web.HTTPRequestEntityTooLarge:
            return self.error(api, 413, f"request body exceeds {limit} bytes",
                              code="request_too_large")

    async def pass_through(
        self, request: web.Request, provider: ProviderConfig, rest: str
    ) -> web.StreamResponse:
        """Forward a free (or allowed unmetered) request as is. Upstream transport errors are
        answered as in `forward`: 502 in the provider's format before the client got a byte,
        a closed connection after."""
        body = await self.read_body(request, provider.api)
        if isinstance(body, web.Response):
            return body
        try:
            upstream = await self.session.request(
                request.method, self.upstream_url(provider, rest, request.rel_url.raw_query_string),
                headers=self.upstream_headers(request, provider), data=body or None,
            )
        except (aiohttp.ClientError, TimeoutError) as exc:
            message, code = _upstream_failure(provider.name, exc)
            return self.error(provider.api, 502, message, code=code)
        async with upstream:
            response = web.StreamResponse(status=upstream.status,
                                          headers=_response_headers(upstream))
            try:
                async for chunk in upstream.content.iter_any():
                    if not response.prepared:
                        await response.prepare(request)
                    await response.write(chunk)
                if not response.prepared:
                    await response.prepare(request)  # an empty body
                await response.write_eof()
            except ConnectionResetError:
                log.info("client went away during a pass-through answer")
            except (aiohttp.ClientError, TimeoutError) as exc:
                if not response.prepared:
                    message, code = _upstream_failure(provider.name, exc)
                    return self.error(provider.api, 502, message, code=code)
                log.warning("upstream %s answer broke after %d bytes were relayed: %s",
                            provider.name, upstream.content.total_bytes, _one_line(exc))
                if request.transport is not None:
                    request.transport.close()
            return response

    async def metered(
        self, request: web.Request, provider: ProviderConfig, rest: str, kind: str,
        started_at: float,
    ) -> web.StreamResponse:
        api = provider.api
        adapter = adapter_for(api)
        raw = await self.read_body(request, api)
        if isinstance(raw, web.Response):
            return raw
        try:
            plan = adapter.plan(kind, rest, request.rel_url.raw_query_string, raw, provider)
        except RequestProblem as problem:
            return self.error(api, 400, problem.message, code=problem.code)
        model = requested_model = plan.model

        who = self.attribution(request)
        priced_as = adapter.catalog_provider(provider)
        price = self.price_for(priced_as, model)
        if price is None:  # BUDGET_UNKNOWN_PRICE=refuse: never forwarded, never free
            return self.error(
                api, 400, f"model {model!r} (provider {provider.name}) has no price in the "
                "budget proxy's catalog; unpriced models are refused (BUDGET_UNKNOWN_PRICE="
                "refuse)", code="unknown_model_price")
        tools = [tool for tool, _ in plan.units.tool_calls]
        if tools:
            priced = self.catalog.with_tool_fees(price, tools, priced_as,
                                                 self.settings.unknown_price)
            if priced is None:
                return self.error(
                    api, 400, f"model {model!r} (provider {provider.name}) has no price in "
                    f"the budget proxy's catalog for a call of {', '.join(tools)}; unpriced "
                    "tools are refused (BUDGET_UNKNOWN_PRICE=refuse)",
                    code="unknown_model_price")
            price = priced
        now = self.store.now()
        planned = await self.plan_lines(request, api, provider.name, model, price, who, now)
        if isinstance(planned, web.Response):
            return planned
        lines, who = planned
        notes: list[str] = []

        input_tokens = await adapter.count_input(plan, len(raw))
        reservation = self.reservation_for(lines, input_tokens, plan, price, Call(
            provider.name, kind, model, requested_model, who, plan.streaming))
        result = await self.reserve(api, lines, reservation, notes)
        if isinstance(result, web.Response):
            return result

        # Soft limits decide on the totals the reservation itself returned (no extra round
        # trip): past the action threshold, release and reserve again for the cheaper model.
        if any(self.policies.by_id[ln.policy_id].type is PolicyType.SOFT_LIMIT
               for ln in lines if ln.policy_id in self.policies.by_id):
            before = _without_hold(result, reservation)
            moved, soft_notes = soft_limit_move(self.policies.by_id, lines, before)
            notes.extend(soft_notes)
            moved_price = self.price_for(priced_as, moved) if moved and moved != model else None
            if moved_price is not None and tools:
                moved_price = self.catalog.with_tool_fees(moved_price, tools, priced_as,
                                                          self.settings.unknown_price)
            moved_plan = adapter.with_model(plan, moved) if moved and moved_price else None
            if moved and moved_price is not None and moved_plan is not None:
                if result.ok:
                    try:
                        await self.store.release(reservation)
                    except StoreError:
                        pass  # the reaper releases it at its deadline
                planned = await self.plan_lines(request, api, provider.name, moved, moved_price,
                                                who, now)
                if isinstance(planned, web.Response):
                    return planned
                model, price, plan, (lines, who) = moved, moved_price, moved_plan, planned
                input_tokens = await adapter.count_input(plan, len(raw))
                reservation = self.reservation_for(lines, input_tokens, plan, price, Call(
                    provider.name, kind, model, requested_model, who, plan.streaming))
                result = await self.reserve(api, lines, reservation, notes)
                if isinstance(result, web.Response):
                    return result
        if not result.ok:
            return self.refuse(api, provider.name, lines, result, reservation)

        meta = Metered(
            provider=provider.name, api=api, endpoint=kind, route=rest, model=model,
            requested_model=requested_model, price=price, attribution=who,
            reservation=reservation, lines=tuple(lines), input_tokens_estimate=input_tokens,
            streamed=plan.streaming,
            started_at=started_at,
        )
        headers = self.budget_headers(lines, result, notes)
        return await self.forward(request, provider, rest, plan.upstream_body(raw), meta,
                                  headers, adapter, plan)

    async def plan_lines(
        self, request: web.Request, api: str, provider: str, model: str, price: ModelPrice,
        who: Attribution, now: datetime,
    ) -> tuple[list[CounterLine], Attribution] | web.Response:
        """The counter lines of a call to `model`: its matching policy windows, and when it
        draws on an allocation, that allocation's enforced line in their place (see
        `budget_proxy.allocations`)."""
        if self.policies.version < 0 and self.settings.fail_mode != "open":
            # the store has been down since start-up: which limits apply is unknown
            return self.store_down(api, StoreError("policies not loaded yet"))
        caller = request.get(CALLER)  # a key budget (policy `key_id`) matches only its key
        key_id = caller.key_id if caller is not None else None
        scope = replace(self.scope(provider, model, price, who), key_id=key_id)
        lines = counter_lines(self.policies.policies, scope, now, self.tz)
        if not (who.allocation_id or who.context_id):
            return lines, who
        try:
            plan = await allocations.plan_draw(self.store, who.allocation_id, who.context_id,
                                               lines, scope)
        except StoreError as exc:
            if self.settings.fail_mode != "open":
                return self.store_down(api, exc)
            plan = allocations.DrawPlan(lines)  # fail open: charged as if it had none
        if plan.refusal is not None:
            named = plan.allocation.allocation_id if plan.allocation else who.allocation_id
            return self.error(api, 429, f"Budget exceeded: {plan.refusal}",
                              code="budget_exceeded", headers={
                                  "x-should-retry": "false", "X-Budget-Policy": named or ""})
        alloc = plan.allocation
        if alloc is None:
            return lines, who
        lines = plan.lines
        who = replace(who, allocation_id=alloc.allocation_id,
                      context_id=who.context_id or alloc.context_id)
        if (who.component != alloc.component and _virtual_key(request.headers) is None
                and "X-Budget-Component" not in request.headers):
            # naming no component, it does the allocation's work: charged to its one
            who = replace(who, component=alloc.component)
            lines = allocations.drawn_lines(alloc, counter_lines(
                self.policies.policies,
                replace(self.scope(provider, model, price, who), key_id=key_id), now, self.tz))
        return lines, who

    @staticmethod
    def reservation_for(lines: list[CounterLine], input_tokens: int, plan: Plan,
                        price: ModelPrice, call: Call) -> Reservation:
        """The worst case of a call: all its input plus the most output it allows, once per
        answer it asks for (`n`), with or without an explicit cap (each clamped to
        `MAX_CALL_TOKENS`); with its intent: the `unsettled` usage record that charges the
        hold if this process dies before the settlement (same record id)."""
        max_out = plan.max_output_tokens
        if max_out is None:  # a model priced by the unit has no token output unless listed
            max_out = price.max_output_tokens or (
                DEFAULT_MAX_OUTPUT_TOKENS if price.price_type == "token" else 0)
        max_out = min(max(max_out, 0) * plan.choices, MAX_CALL_TOKENS)
        input_tokens = min(max(input_tokens, 0), MAX_CALL_TOKENS)
        reservation_id = new_id("res")
        cost_nusd = worst_case_nusd(input_tokens, max_out, price, plan.units)
        who = call.who
        return Reservation(
            reservation_id=reservation_id,
            keys=tuple(ln.key for ln in lines),
            cost_nusd=cost_nusd,
            tokens=input_tokens + max_out,
            intent=intent_json({
                "record_id": record_id_of(reservation_id), "allocation_id": who.allocation_id,
                "context_id": who.context_id, "component": who.component,
                "session_id": who.session, "task_id": who.task, "task_type": who.task_type,
                "provider": call.provider, "model": call.model,
                "requested_model": call.requested_model, "route": call.endpoint,
                "input_tokens": input_tokens, "output_tokens": max_out,
                "total_tokens": input_tokens + max_out,
                "total_cost": nusd_to_usd(cost_nusd), "pricing_id": price.pricing_id,
                "streamed": call.streamed,
            }),
        )

    async def reserve(
        self, api: str, lines: list[CounterLine], reservation: Reservation, notes: list[str]
    ) -> ReserveResult | web.Response:
        try:
            return await self.store.reserve(reservation, lines, self.settings.reservation_ttl_s)
        except StoreError as exc:
            if self.settings.fail_mode != "open":
                return self.store_down(api, exc)
            # fail open: forward without a hold; the settlement (journaled by the store)
            # charges the same counters once the store is back, and the intent journaled
            # here first charges them if this process dies before that
            try:
                await self.store.keep_intent(reservation)
            except StoreError as journal_exc:
                log.error("intent of %s not journaled: %s", reservation.reservation_id,
                          journal_exc)
            for hook in self.on_store_failure:
                hook("reserve")
            _log_store_down(f"budget store unavailable, forwarding unchecked (fail open): {exc}")
            notes.append("budget store unavailable: forwarded without a budget check")
            return ReserveResult(True, tuple(Totals() for _ in lines))

    def scope(self, provider: str, model: str, price: ModelPrice, who: Attribution) -> RequestScope:
        return RequestScope(
            provider=provider, model=model, component=who.component, tier=price.tier,
            task_type=who.task_type, session=who.session, task=who.task,
        )

    def budget_headers(
        self, lines: list[CounterLine], result: ReserveResult, notes: list[str]
    ) -> dict[str, str]:
        headers: dict[str, str] = {}
        remaining = tightest_remaining(lines, result.totals)
        if remaining.cost_usd is not None:
            headers["X-Budget-Remaining-Cost"] = f"{remaining.cost_usd:.6f}"
        if remaining.tokens is not None:
            headers["X-Budget-Remaining-Tokens"] = str(remaining.tokens)
        notes = notes + warnings(self.policies.by_id, lines, result.totals)
        if notes:
            headers["X-Budget-Warning"] = "; ".join(notes)
        rate = rate_remaining(lines, result.totals)
        if rate.requests is not None:
            headers["x-ratelimit-remaining-requests"] = str(rate.requests)
        if rate.tokens is not None:
            headers["x-ratelimit-remaining-tokens"] = str(rate.tokens)
        # totals include this call's hold: a shadow line past its limit would have refused it
        shadowed = shadow_refusals(lines, result.totals, 0, 0, 0)
        if shadowed:
            headers["X-Budget-Shadow"] = ", ".join(f"{pid} would refuse" for pid in shadowed)
            for pid in shadowed:
                for hook in self.on_refuse:
                    hook("", pid, "shadow")
        return headers

    def refuse(
        self, api: str, provider: str, lines: list[CounterLine], result: ReserveResult,
        reservation: Reservation,
    ) -> web.Response:
        assert result.refused_index is not None
        line = lines[result.refused_index]
        totals = result.totals[result.refused_index]
        policy = self.policies.by_id.get(line.policy_id)
        label = (policy.name if policy and policy.name else line.policy_id)
        period = policy.period.value if policy else (
            "allocation" if line.key.startswith("alloc:") else "window")
        parts = []
        if line.limit_nusd is not None:
            left = max(0, line.limit_nusd - totals.used_nusd)
            parts.append(f"${nusd_to_usd(left):.6f} of ${nusd_to_usd(line.limit_nusd):.6f} left, "
                         f"this request may cost up to ${nusd_to_usd(reservation.cost_nusd):.6f}")
        if line.limit_tokens is not None:
            left_t = max(0, line.limit_tokens - totals.used_tokens)
            parts.append(f"{left_t} of {line.limit_tokens} tokens left, "
                         f"this request may use up to {reservation.tokens}")
        if line.limit_requests is not None:
            parts.append(f"{totals.requests} of {line.limit_requests} calls made")
        message = f"Budget exceeded: {period} hard limit {label}: " + "; ".join(parts)
        headers = {"x-should-retry": "false", "X-Budget-Policy": line.policy_id}
        retry = seconds_until(line.resets_at, self.store.now())
        if retry is not None:
            headers["Retry-After"] = str(retry)
        if line.limit_requests is not None:  # a rate limit: the provider's own headers too
            rate = rate_remaining([line], [totals])
            headers["x-ratelimit-remaining-requests"] = str(rate.requests or 0)
            if rate.tokens is not None:
                headers["x-ratelimit-remaining-tokens"] = str(rate.tokens)
            if retry is not None:
                headers["x-ratelimit-reset-requests"] = f"{retry}s"
        for hook in self.on_refuse:
            hook(provider, line.policy_id, "limit")
        return self.error(api, 429, message, code="budget_exceeded", headers=headers)

    def store_down(self, api: str, exc: StoreError) -> web.Response:
        """Fail closed: a 503 in the provider's format, at once, never forwarded. SDKs retry
        a 503 (after `Retry-After`), which is right: the store usually comes back."""
        _log_store_down(f"budget store unavailable, refusing (fail closed): {exc}")
        for hook in self.on_store_failure:
            hook("reserve")
        return self.error(api, 503, "budget store unavailable; request not forwarded "
                          "(BUDGET_FAIL_MODE=closed)",
                          code="budget_store_unavailable", headers={"Retry-After": "1"})

    # forward and settle -------------------------------------------------------------------
    async def forward(
        self, request: web.Request, provider: ProviderConfig, rest: str, raw: bytes,
        meta: Metered, budget_headers: dict[str, str], adapter: Adapter, plan: Plan,
    ) -> web.StreamResponse:
        tap = adapter.tap(plan)
        try:
            meta.upstream_sent_at = time.perf_counter()
            try:
                upstream = await self.session.post(
                    self.upstream_url(provider, rest, request.rel_url.raw_query_string),
                    headers=self.upstream_headers(request, provider), data=raw,
                )
            except (aiohttp.ClientError, TimeoutError) as exc:
                meta.status = 502
                message, code = _upstream_failure(provider.name, exc)
                return self.error(meta.api, 502, message, code=code)
            meta.upstream_headers_at = time.perf_counter()
            meta.status = upstream.status
            async with upstream:
                headers = _response_headers(upstream)
                headers.update(budget_headers)
                parser = (adapter.stream_parser(plan, upstream.content_type)
                          if upstream.status < 400 else None)
                if parser is not None:
                    meta.outcome = "aborted"
                    response, complete = await self.relay_stream(
                        request, upstream, headers, parser, tap, meta)
                    if complete:
                        meta.outcome = "ok"
                    return response
                try:
                    body = await upstream.read()
                except (aiohttp.ClientError, TimeoutError) as exc:  # short, reset, bad encoding
                    meta.status = 502
                    message, code = _upstream_failure(provider.name, exc)
                    return self.error(meta.api, 502, message, code=code)
                meta.first_chunk_at = meta.upstream_done_at = time.perf_counter()
                if upstream.status >= 400:
                    return web.Response(status=upstream.status, body=body, headers=headers)
                meta.outcome = "ok"
                try:
                    tap.observe_answer(body)  # total; the guard keeps the client's answer safe
                except Exception as exc:  # any bug in the tap: logged in one line
                    log.warning("usage tap failed on a %s answer, settling from the proxy's "
                                "count: %s: %s", provider.name, type(exc).__name__, exc)
                response = web.Response(status=upstream.status, body=body, headers=headers)
                await response.prepare(request)
                await response.write_eof()
                return response
        finally:
            meta.finished_at = time.perf_counter()
            # Settlement runs in its own task, after the response is complete: off the
            # client's latency path, and beyond the reach of the handler's cancellation (a
            # client hanging up). Reads through this replica wait for it (`settled`).
            task = asyncio.ensure_future(self.settle(meta, tap, meta.outcome))
            self.background.add(task)
            task.add_done_callback(self.background.discard)

    async def relay_stream(
        self, request: web.Request, upstream: aiohttp.ClientResponse, headers: dict[str, str],
        parser: StreamParser, tap: UsageTap, meta: Metered,
    ) -> tuple[web.StreamResponse, bool]:
        """Relay a stream unit by unit (SSE events, NDJSON lines...), each as received;
        (response, whether the stream ran to its end). The client's headers wait for the
        upstream's first bytes, so an upstream that breaks before sending any is answered 502
        in the provider's format (and the hold released); one that breaks later is cut at the
        client too (its connection is closed without the end of the body, as the upstream's
        was) and settled from what was streamed. A failure of the usage tap never cuts a
        stream: the unit is relayed."""
        response = web.StreamResponse(status=upstream.status, headers=headers)
        tap_failed = False

        def relayed(events: list[bytes]) -> bytes:
            nonlocal tap_failed
            out = []
            for event in events:
                try:
                    keep = tap.observe_event(event)
                except Exception as exc:  # the tap is total; belt and braces
                    keep = True
                    if not tap_failed:
                        tap_failed = True
                        log.warning("usage tap failed on a %s stream event, relaying it: %s: %s",
                                    meta.provider, type(exc).__name__, exc)
                if keep:
                    out.append(event)
            return b"".join(out)

        try:
            async for chunk in upstream.content.iter_any():
                if not meta.first_chunk_at:
                    meta.first_chunk_at = time.perf_counter()
                    await response.prepare(request)
                out = relayed(parser.feed(chunk))
                if out:
                    await response.write(out)
            meta.upstream_done_at = time.perf_counter()
            if not response.prepared:
                await response.prepare(request)  # an empty stream
            rest = parser.flush()
            out = relayed([rest]) if rest else b""
            if out:
                await response.write(out)
            await response.write_eof()
        except ConnectionResetError:
            log.info("client went away mid-stream; settling from what was streamed")
            return response, False
        except (aiohttp.ClientError, TimeoutError) as exc:
            if not response.prepared:  # nothing reached the client: an error, not a stream
                meta.status, meta.outcome = 502, "error"
                message, code = _upstream_failure(meta.provider, exc)
                return self.error(meta.api, 502, message, code=code), False
            log.warning("upstream %s stream broke after %d bytes of it were relayed: %s",
                        meta.provider, upstream.content.total_bytes, _one_line(exc))
            if request.transport is not None:
                request.transport.close()
            return response, False
        return response, True

    async def settle(self, meta: Metered, tap: UsageTap, outcome: str) -> None:
        """Settle from the provider's usage, or from what was streamed when it was cut short;
        release when nothing reached the client (upstream error)."""
        reservation = meta.reservation
        if outcome == "error":
            try:
                await self.store.release(reservation)
            except StoreError as exc:  # retried by the store with its hold renewals
                log.warning("release of %s failed (retried): %s", reservation.reservation_id,
                            exc)
                for hook in self.on_store_failure:
                    hook("release")
            for finish in self.on_finish:
                finish(meta, None)
            return
        usage = tap.usage
        if usage is None or not usage.trusted:
            usage = await self.usage_from_stream(meta, tap)
        cost = cost_of(usage, meta.price)
        who = meta.attribution
        record = UsageRecord(
            record_id=record_id_of(reservation.reservation_id),  # its intent's, if it died
            allocation_id=who.allocation_id, context_id=who.context_id, component=who.component,
            session_id=who.session, task_id=who.task, task_type=who.task_type,
            provider=meta.provider, model=meta.model, requested_model=meta.requested_model,
            route=meta.endpoint,
            input_tokens=usage.input_tokens, cached_input_tokens=usage.cached_input_tokens,
            cache_write_tokens=usage.cache_write_tokens, output_tokens=usage.output_tokens,
            reasoning_tokens=usage.reasoning_tokens, total_tokens=usage.total_tokens,
            input_cost=nusd_to_usd(cost.input_nusd), output_cost=nusd_to_usd(cost.output_nusd),
            total_cost=nusd_to_usd(cost.total_nusd), pricing_id=meta.price.pricing_id,
            status="ok" if tap.usage is not None or outcome == "ok" else "aborted",
            streamed=meta.streamed, metadata=_record_metadata(usage),
        )
        try:
            await self.store.settle(reservation, cost.total_nusd, usage.total_tokens, record)
        except SettlementJournaled as exc:  # durable: applied exactly once when back
            _log_store_down(str(exc))
            for hook in self.on_store_failure:
                hook("settle")
        except StoreError as exc:
            log.error("settlement of %s failed: %s", record.record_id, exc)
            for hook in self.on_store_failure:
                hook("settle")
            return
        for finish in self.on_finish:
            finish(meta, record)

    async def usage_from_stream(self, meta: Metered, tap: UsageTap) -> Usage:
        """Usage of a call whose provider figures are missing (a stream cut short, an answer
        without readable usage) or unusable (a main count flagged): the input the provider
        confirmed (Anthropic's `message_start`) or our count of it, plus the output seen
        (streamed, or the answer's text) counted with tiktoken (in a thread when long, to
        keep the loop free). Flagged as the provider's figures were (see `UsageTap`)."""
        text = tap.output_text()
        if len(text) > 16_384:
            loop = asyncio.get_running_loop()
            output = await loop.run_in_executor(None, tokens.count_text, text, meta.model)
        else:
            output = tokens.count_text(text, meta.model)
        return tap.fallback_usage(meta.input_tokens_estimate, output,
                                  complete=meta.outcome == "ok")

    async def drain(self) -> None:
        """Wait for in-flight settlements (shutdown)."""
        if self.background:
            await asyncio.gather(*self.background, return_exceptions=True)

    async def settled(self) -> None:
        """Wait for the settlements already started, so a read through this replica sees
        every call it has answered (read-your-writes for the admin API)."""
        pending = [task for task in self.background if not task.done()]
        if pending:
            await asyncio.wait(pending)


_store_down_logged_at = 0.0


def _log_store_down(message: str) -> None:
    """Store outages log once a second, not once per request."""
    global _store_down_logged_at
    now = time.monotonic()
    if now - _store_down_logged_at >= 1.0:
        _store_down_logged_at = now
        log.error("%s", message)


def _without_hold(result: ReserveResult, reservation: Reservation) -> list[Totals]:
    """Totals as they were before this reservation (a refused one added nothing)."""
    if not result.ok:
        return list(result.totals)
    return [Totals(t.spent_nusd, max(0, t.reserved_nusd - reservation.cost_nusd),
                   t.spent_tokens, max(0, t.reserved_tokens - reservation.tokens))
            for t in result.totals]


def _record_metadata(usage: Usage) -> dict[str, Any]:
    """What a record says beside its tokens: why its figures were flagged, and the units of
    the seed's other price types it was charged for."""
    meta: dict[str, Any] = {"flagged": list(usage.flags)} if usage.flags else {}
    if usage.characters:
        meta["characters"] = usage.characters
    if usage.images:
        meta["images"] = usage.images
        meta["image_size"] = usage.image_size
        if usage.image_quality:
            meta["image_quality"] = usage.image_quality
    if usage.audio_ms:
        meta["audio_seconds"] = usage.audio_ms / 1000
    if usage.tool_calls:
        meta["tool_calls"] = dict(usage.tool_calls)
    return meta


def _one_line(exc: BaseException) -> str:
    return " ".join(str(exc).split()) or type(exc).__name__


def _upstream_failure(provider: str, exc: BaseException) -> tuple[str, str]:
    """(message, code) of the 502 for an upstream call that failed before the client got a
    byte: timed out, unreachable (or gone before answering), or an answer that could not be
    read (bad status line or framing, a short body, an encoding that does not decode)."""
    if isinstance(exc, TimeoutError):
        return f"upstream {provider} timed out", "upstream_timeout"
    if isinstance(exc, aiohttp.ClientConnectionError):
        return f"upstream {provider} unreachable: {_one_line(exc)}", "upstream_unreachable"
    return (f"upstream {provider} answer could not be read: {_one_line(exc)}",
            "bad_upstream_response")


def _virtual_key(headers: Any) -> str | None:
    """A `bp-...` secret from whichever credential header the client's SDK uses."""
    scheme, _, token = headers.get("Authorization", "").partition(" ")
    if scheme.lower() == "bearer" and token.strip().startswith("bp-"):
        return token.strip()
    for name in ("x-api-key", "api-key", "x-goog-api-key"):
        value = headers.get(name, "")
        if value.startswith("bp-"):
            return value
    return None


def _response_headers(upstream: aiohttp.ClientResponse) -> dict[str, str]:
    return {k: v for k, v in upstream.headers.items() if k.lower() not in RESPONSE_DROP}

