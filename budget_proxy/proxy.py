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
from typing import Any
from zoneinfo import ZoneInfo

import aiohttp
from aiohttp import web
from yarl import URL

from budget_proxy import allocations, planning, routing, tokens
from budget_proxy.config import ProviderConfig, Settings
from budget_proxy.enforcement import (
    CounterLine,
    LineCache,
    RequestScope,
    ReserveResult,
    Totals,
    rate_remaining,
    shadow_refusals,
    tightest_remaining,
    warnings,
)
from budget_proxy.models import MAX_CALL_TOKENS, UsageRecord, new_id, nusd_to_usd
from budget_proxy.periods import seconds_until
from budget_proxy.policy_cache import PolicyCache
from budget_proxy.pricing import ModelPrice, PriceCatalog
from budget_proxy.providers import Adapter, Plan, RequestProblem, adapter_for, base
from budget_proxy.routing import Classified, Refusal, RouteClass
from budget_proxy.store.base import (
    Reservation,
    Store,
    StoreError,
    intent_json,
    record_id_of,
)
from budget_proxy.store.journal import SettlementJournaled
from budget_proxy.usage import NO_UNITS, Cost, Usage, cost_of
from budget_proxy.wire import SSEParser, StreamParser, UsageTap

log = logging.getLogger(__name__)
# the longest a finished call waits for the next one to go upstream before it is settled
SETTLE_AFTER_S = 0.002

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

OVERHEAD_HEADER = "X-Budget-Overhead-Ms"
# provider, route (endpoint kind or "other"), answer (metered, free, refused), overhead in s
AnswerHook = Callable[[str, str, str, float], None]


@dataclass(slots=True)
class Timing:
    """The proxy's own time on one request: from its arrival to its answer's headers, minus
    the time spent waiting on the upstream (request sent to its answer, or to the first chunk
    of a stream). Every answer under a provider prefix carries it (`stamp_overhead`)."""

    started_at: float  # perf_counter() when the request arrived
    hooks: list[AnswerHook]
    provider: str = ""
    route: str = "other"
    answer: str = "refused"  # metered | free once forwarded; refused: answered by the proxy
    waited_s: float = 0.0
    waiting_since: float = 0.0

    def wait(self) -> None:
        """The upstream has the call: its time is not the proxy's."""
        self.waiting_since = time.perf_counter()

    def resume(self) -> None:
        if self.waiting_since:
            self.waited_s += time.perf_counter() - self.waiting_since
            self.waiting_since = 0.0

    def overhead_s(self, now: float) -> float:
        waiting = now - self.waiting_since if self.waiting_since else 0.0
        return max(0.0, now - self.started_at - self.waited_s - waiting)


TIMING = web.RequestKey("budget_proxy_timing", Timing)


async def stamp_overhead(request: web.Request, response: web.StreamResponse) -> None:
    """`on_response_prepare`: the answer to a proxy route carries `X-Budget-Overhead-Ms`
    (the proxy's own time until its headers), and the answer hooks see it (the metrics'
    histogram); other routes are left alone."""
    timing = request.get(TIMING)
    if timing is None:
        return
    overhead_s = timing.overhead_s(time.perf_counter())
    response.headers[OVERHEAD_HEADER] = f"{overhead_s * 1000:.3f}"
    for hook in timing.hooks:
        hook(timing.provider, timing.route, timing.answer, overhead_s)


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
class Pending:
    """A metered call while it is planned: each step of `Proxy.metered` fills its part."""

    provider: ProviderConfig
    adapter: Adapter
    raw: bytes
    plan: Plan
    requested_model: str
    who: Attribution
    priced_as: str  # the provider its models are priced under
    price: ModelPrice = field(init=False)
    lines: list[CounterLine] = field(default_factory=list)
    input_tokens: int = 0
    cap_tokens: int = 0  # the most output the call allows, all choices
    held: planning.Hold | None = None
    reservation: Reservation | None = None
    result: ReserveResult | None = None
    notes: list[str] = field(default_factory=list)
    headers: dict[str, str] = field(default_factory=dict)  # told to the client (fit)

    @property
    def tools(self) -> tuple[str, ...]:
        return tuple(tool for tool, _ in self.plan.units.tool_calls)


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
    # timing points (perf_counter); the proxy's own time is in `Timing`
    upstream_sent_at: float = 0.0
    upstream_headers_at: float = 0.0
    first_chunk_at: float = 0.0
    upstream_done_at: float = 0.0
    finished_at: float = 0.0
    status: int = 0
    outcome: str = "error"  # ok | aborted | error (upstream error or unreachable)
    extra_meta: dict[str, Any] = field(default_factory=dict)
    units: Usage = NO_UNITS  # the most units (characters, images...) the call may use
    cap_tokens: int = 0  # the most output the call allows, all choices
    held_output_tokens: int = 0  # output its hold covers (grows with an incremental stream)
    incremental: bool = False  # a stream whose hold is extended as it is relayed
    cut_by: str | None = None  # the policy that refused an extension: the stream was cut
    usage: Usage | None = None  # settled usage, once known before the settlement
    priced: tuple[Usage, Cost] | None = None  # the last usage `cost_of` priced, and its cost

    def cost_of(self, usage: Usage) -> Cost:
        """The cost of `usage` at the call's price; priced once though the answer's
        `X-Budget-Cost`, a cut stream's events and the settlement all ask."""
        if self.priced is None or self.priced[0] is not usage:
            self.priced = (usage, cost_of(usage, self.price))
        return self.priced[1]


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
        self.lines = LineCache()  # the counter lines of each scope, until a window resets
        self.background: set[asyncio.Task[Any]] = set()
        self._to_settle: list[tuple[Metered, UsageTap, str]] = []  # see `settle_later`
        self._settle_timer: asyncio.TimerHandle | None = None
        self.on_finish: list[FinishHook] = []
        self.on_refuse: list[RefuseHook] = []
        self.on_store_failure: list[StoreFailureHook] = []
        self.on_error_response: list[ErrorResponseHook] = []
        self.on_unmetered: list[UnmeteredHook] = []
        self.on_answer: list[AnswerHook] = []
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
        timing = request.get(TIMING)
        if timing is not None:  # refusals from here on are the provider's
            timing.provider = provider.name
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
        timing = request[TIMING] = Timing(started_at, self.on_answer)
        try:
            provider, rest, route = self.resolve(request)
        except Refusal as refusal:
            return self.error(refusal.api, refusal.status, refusal.message, code=refusal.code,
                              headers=refusal.headers or None)
        if route.route_class is RouteClass.METERED and route.endpoint is not None:
            timing.route = route.endpoint
            return await self.metered(request, provider, rest, route.endpoint, started_at)
        return await self.pass_through(request, provider, rest, timing)

    def error(self, api: str, status: int, message: str, *, code: str | None = None,
              headers: dict[str, str] | None = None) -> web.Response:
        for hook in self.on_error_response:
            hook(api, status, code or "")
        return web.Response(
            status=status, body=adapter_for(api).error_body(status, message, code=code),
            content_type="application/json", headers=headers,
        )

    async def read_body(self, request: web.Request, api: str) -> bytes:
        """The request's body, or a 413 `Refusal` past BUDGET_MAX_BODY_BYTES."""
        limit = self.settings.max_body_bytes
        too_large = Refusal(413, "request_too_large", f"request body exceeds {limit} bytes",
                            api=api)
        if request.content_length is not None and request.content_length > limit:
            raise too_large
        try:
            return await request.read()
        except web.HTTPRequestEntityTooLarge:
            raise too_large from None

    async def pass_through(
        self, request: web.Request, provider: ProviderConfig, rest: str, timing: Timing
    ) -> web.StreamResponse:
        """Forward a free (or allowed unmetered) request as is. Upstream transport errors are
        answered as in `forward`: 502 in the provider's format before the client got a byte,
        a closed connection after."""
        try:
            body = await self.read_body(request, provider.api)
        except Refusal as refusal:
            return self.error(refusal.api, refusal.status, refusal.message, code=refusal.code)
        timing.answer = "free"
        timing.wait()
        if self._to_settle:  # the last calls' bookkeeping runs while this one is upstream
            self.start_settlements()
        try:
            upstream = await self.session.request(
                request.method, self.upstream_url(provider, rest, request.rel_url.raw_query_string),
                headers=self.upstream_headers(request, provider), data=body or None,
            )
        except (aiohttp.ClientError, TimeoutError) as exc:
            timing.resume()
            message, code = _upstream_failure(provider.name, exc)
            return self.error(provider.api, 502, message, code=code)
        async with upstream:
            response = web.StreamResponse(status=upstream.status,
                                          headers=_response_headers(upstream))
            try:
                async for chunk in upstream.content.iter_any():
                    if not response.prepared:
                        timing.resume()
                        await response.prepare(request)
                    await response.write(chunk)
                timing.resume()
                if not response.prepared:
                    await response.prepare(request)  # an empty body
                await response.write_eof()
            except ConnectionResetError:
                log.info("client went away during a pass-through answer")
            except (aiohttp.ClientError, TimeoutError) as exc:
                timing.resume()
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
        """The steps of a metered call: read and plan it, price it, find its windows, hold its
        cost (moved to a soft limit's model, or fitted to the budget), forward it, settle it.
        A step that refuses raises a `Refusal`, rendered here once."""
        try:
            call = await self.read_call(request, provider, rest, kind)
            self.price_call(call)
            await self.find_windows(request, call)
            await self.hold(request, call)
        except Refusal as refusal:
            return self.error(refusal.api, refusal.status, refusal.message, code=refusal.code,
                              headers=refusal.headers or None)
        assert call.held is not None and call.reservation is not None and call.result
        incremental = (call.plan.streaming and self.settings.stream_enforcement == "incremental"
                       and call.held.output_tokens < call.cap_tokens)
        meta = Metered(
            provider=provider.name, api=provider.api, endpoint=kind, route=rest,
            model=call.plan.model, requested_model=call.requested_model, price=call.price,
            attribution=call.who, reservation=call.reservation, lines=tuple(call.lines),
            input_tokens_estimate=call.input_tokens, streamed=call.plan.streaming,
            started_at=started_at, units=call.plan.units, cap_tokens=call.cap_tokens,
            held_output_tokens=call.held.output_tokens, incremental=incremental,
        )
        headers = self.budget_headers(call.lines, call.result, call.notes)
        headers.update(call.headers)
        request[TIMING].answer = "metered"
        return await self.forward(request, provider, rest, call.plan.upstream_body(call.raw),
                                  meta, headers, call.adapter, call.plan)

    async def read_call(self, request: web.Request, provider: ProviderConfig, rest: str,
                        kind: str) -> Pending:
        """The request read and planned by its family's adapter (400 when it cannot be)."""
        adapter = adapter_for(provider.api)
        raw = await self.read_body(request, provider.api)
        try:
            plan = adapter.plan(kind, rest, request.rel_url.raw_query_string, raw, provider)
        except RequestProblem as problem:
            raise Refusal(400, problem.code, problem.message, api=provider.api) from None
        return Pending(provider, adapter, raw, plan, plan.model, self.attribution(request),
                       adapter.catalog_provider(provider))

    def price_call(self, call: Pending) -> None:
        """The price of the call's model (and of the built-in tools it may call); an unpriced
        one is refused under BUDGET_UNKNOWN_PRICE=refuse, never forwarded, never free."""
        price = self.priced(call, call.plan.model)
        if price is None:
            tools = call.tools
            what = f" for a call of {', '.join(tools)}" if tools else ""
            rule = "tools" if tools else "models"
            raise Refusal(400, "unknown_model_price", f"model {call.plan.model!r} (provider "
                          f"{call.provider.name}) has no price in the budget proxy's catalog"
                          f"{what}; unpriced {rule} are refused (BUDGET_UNKNOWN_PRICE=refuse)",
                          api=call.provider.api)
        call.price = price

    def priced(self, call: Pending, model: str) -> ModelPrice | None:
        price = self.price_for(call.priced_as, model)
        if price is not None and call.tools:
            price = self.catalog.with_tool_fees(price, list(call.tools), call.priced_as,
                                                self.settings.unknown_price)
        return price

    async def find_windows(self, request: web.Request, call: Pending) -> None:
        """The counter lines of the call (`planning.windows`): its matching policy windows,
        and when it draws on an allocation, that allocation's enforced line in their place."""
        api = call.provider.api
        if self.policies.version < 0 and self.settings.fail_mode != "open":
            # the store has been down since start-up: which limits apply is unknown
            raise self.store_down(api, StoreError("policies not loaded yet"))
        who = call.who
        caller = request.get(CALLER)  # a key budget (policy `key_id`) matches only its key
        scope = self.scope(call.provider.name, call.plan.model, call.price, who,
                           key_id=caller.key_id if caller is not None else None)
        alloc = None
        if who.allocation_id or who.context_id:
            try:
                alloc, refusal = await allocations.lookup(self.store, who.allocation_id,
                                                          who.context_id)
            except StoreError as exc:
                if self.settings.fail_mode != "open":
                    raise self.store_down(api, exc) from None
                alloc, refusal = None, None  # fail open: charged as if it had none
            if refusal is not None:
                named = alloc.allocation_id if alloc else who.allocation_id
                raise Refusal(429, "budget_exceeded", f"Budget exceeded: {refusal}", api=api,
                              headers={"x-should-retry": "false",
                                       "X-Budget-Policy": named or ""})
        component_named = (_virtual_key(request.headers) is not None
                           or "X-Budget-Component" in request.headers)
        found = planning.windows(self.policies.policies, scope, self.store.now(), self.tz,
                                 alloc, component_named=component_named,
                                 lines_of=self.lines.lines)
        call.lines = found.lines
        if found.allocation is not None:
            call.who = replace(who, allocation_id=found.allocation.allocation_id,
                               context_id=who.context_id or found.allocation.context_id,
                               component=found.component)

    async def hold(self, request: web.Request, call: Pending) -> None:
        """Reserve the call's first hold. Soft limits decide on the totals the reservation
        itself returned (no extra round trip): past the action threshold, release and hold
        again for the cheaper model. A hold a hard limit refuses is fitted (a lower output
        cap under BUDGET_ON_INSUFFICIENT=fit, a smaller first slice for an incremental
        stream) or refused."""
        await self.reserve_call(call)
        assert call.result is not None and call.reservation is not None
        if planning.soft_limited(self.policies.by_id, call.lines):
            moved, notes = planning.moved_model(
                self.policies.by_id, call.lines, _without_hold(call.result, call.reservation),
                call.plan.model)
            call.notes.extend(notes)
            moved_price = self.priced(call, moved) if moved else None
            moved_plan = call.adapter.with_model(call.plan, moved) if moved and moved_price \
                else None
            if moved_price is not None and moved_plan is not None:
                if call.result.ok:
                    try:
                        await self.store.release(call.reservation)
                    except StoreError:
                        pass  # the reaper releases it at its deadline
                call.plan, call.price = moved_plan, moved_price
                await self.find_windows(request, call)
                await self.reserve_call(call)
        if not call.result.ok:
            await self.fit(call)

    async def reserve_call(self, call: Pending) -> None:
        # the model's rank table, loaded off the loop when first needed: the counts of the
        # stream's text and of the settlement then never load one on the loop
        await tokens.load_for(call.plan.model)
        call.input_tokens = await call.adapter.count_input(call.plan, len(call.raw))
        call.cap_tokens = planning.output_cap(call.plan.max_output_tokens, call.plan.choices,
                                              call.price)
        held = planning.first_hold(
            call.input_tokens, call.cap_tokens, call.price, call.plan.units,
            streaming=call.plan.streaming, enforcement=self.settings.stream_enforcement,
            slice_tokens=self.settings.stream_slice_tokens)
        await self.reserve_hold(call, held)

    async def reserve_hold(self, call: Pending, held: planning.Hold) -> None:
        call.held = held
        call.reservation = self.reservation_for(call.lines, held, call.price, Call(
            call.provider.name, call.plan.endpoint, call.plan.model, call.requested_model,
            call.who, call.plan.streaming))
        call.result = await self.reserve(call.provider.api, call.lines, call.reservation,
                                         call.notes)

    async def fit(self, call: Pending) -> None:
        """A refused hold, fitted: the most output every enforced line still pays besides
        the input. An incremental stream starts with that as its first slice; under
        BUDGET_ON_INSUFFICIENT=fit a call's output cap is lowered to it per choice (told in
        `X-Budget-Max-Tokens`). Refused when not even the input fits, or when the fitted
        hold is refused in turn (another call took the room meanwhile)."""
        assert call.result is not None and call.held is not None
        refusal = self.refusal(call)
        stream = call.plan.streaming and self.settings.stream_enforcement == "incremental"
        if not stream and self.settings.on_insufficient != "fit":
            raise refusal
        fitted = planning.fitting_output(call.lines, call.result.totals, call.input_tokens,
                                         call.held.output_tokens, call.price, call.plan.units)
        if not stream:
            per_choice = fitted // call.plan.choices
            plan = call.adapter.with_output_cap(call.plan, per_choice) if per_choice else None
            if plan is None:
                raise refusal
            call.plan, fitted = plan, per_choice * call.plan.choices
            call.cap_tokens = fitted
            call.headers["X-Budget-Max-Tokens"] = str(per_choice)
        if fitted < 1:
            raise refusal
        await self.reserve_hold(call, planning.hold(call.input_tokens, fitted, call.price,
                                                    call.plan.units))
        if not call.result.ok:
            raise self.refusal(call)

    @staticmethod
    def reservation_for(lines: list[CounterLine], held: planning.Hold, price: ModelPrice,
                        call: Call) -> Reservation:
        """A call's hold with its intent: the `unsettled` usage record that charges the hold
        if this process dies before the settlement (same record id)."""
        reservation_id = new_id("res")
        who = call.who
        return Reservation(
            reservation_id=reservation_id,
            keys=tuple(ln.key for ln in lines),
            cost_nusd=held.cost_nusd,
            tokens=held.tokens,
            intent=intent_json({
                "record_id": record_id_of(reservation_id), "allocation_id": who.allocation_id,
                "context_id": who.context_id, "component": who.component,
                "session_id": who.session, "task_id": who.task, "task_type": who.task_type,
                "provider": call.provider, "model": call.model,
                "requested_model": call.requested_model, "route": call.endpoint,
                "input_tokens": held.input_tokens, "output_tokens": held.output_tokens,
                "total_tokens": held.tokens,
                "total_cost": nusd_to_usd(held.cost_nusd), "pricing_id": price.pricing_id,
                "streamed": call.streamed,
            }),
        )

    async def reserve(
        self, api: str, lines: list[CounterLine], reservation: Reservation, notes: list[str]
    ) -> ReserveResult:
        try:
            return await self.store.reserve(reservation, lines, self.settings.reservation_ttl_s)
        except StoreError as exc:
            if self.settings.fail_mode != "open":
                raise self.store_down(api, exc) from None
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

    def scope(self, provider: str, model: str, price: ModelPrice, who: Attribution,
              key_id: str | None = None) -> RequestScope:
        return RequestScope(provider, model, who.component, price.tier, who.task_type,
                            who.session, who.task, key_id)

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

    def refusal(self, call: Pending) -> Refusal:
        """The 429 of a hold a hard limit refused (`planning.refusal_message`), with
        `Retry-After` at the window's reset and, for a rate limit, the provider's own
        `x-ratelimit-*` headers."""
        result, held = call.result, call.held
        assert result is not None and held is not None and result.refused_index is not None
        line = call.lines[result.refused_index]
        totals = result.totals[result.refused_index]
        message = planning.refusal_message(line, totals, held,
                                           self.policies.by_id.get(line.policy_id))
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
            hook(call.provider.name, line.policy_id, "limit")
        return Refusal(429, "budget_exceeded", message, api=call.provider.api, headers=headers)

    def store_down(self, api: str, exc: StoreError) -> Refusal:
        """Fail closed: a 503 in the provider's format, at once, never forwarded. SDKs retry
        a 503 (after `Retry-After`), which is right: the store usually comes back."""
        _log_store_down(f"budget store unavailable, refusing (fail closed): {exc}")
        for hook in self.on_store_failure:
            hook("reserve")
        return Refusal(503, "budget_store_unavailable", "budget store unavailable; request not "
                       "forwarded (BUDGET_FAIL_MODE=closed)", api=api,
                       headers={"Retry-After": "1"})

    # forward and settle -------------------------------------------------------------------
    async def forward(
        self, request: web.Request, provider: ProviderConfig, rest: str, raw: bytes,
        meta: Metered, budget_headers: dict[str, str], adapter: Adapter, plan: Plan,
    ) -> web.StreamResponse:
        tap = adapter.tap(plan)
        timing = request[TIMING]
        url = self.upstream_url(provider, rest, request.rel_url.raw_query_string)
        upstream_headers = self.upstream_headers(request, provider)
        try:
            timing.wait()
            meta.upstream_sent_at = timing.waiting_since
            if self._to_settle:  # the last calls' bookkeeping runs while this one is upstream
                self.start_settlements()
            try:
                upstream = await self.session.post(url, headers=upstream_headers, data=raw)
            except (aiohttp.ClientError, TimeoutError) as exc:
                timing.resume()
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
                    stream = Relay(self, request, upstream, parser, tap, meta, adapter, plan)
                    response, complete = await stream.run(headers)
                    if complete:
                        meta.outcome = "ok"
                    return response
                try:
                    body = await upstream.read()
                except (aiohttp.ClientError, TimeoutError) as exc:  # short, reset, bad encoding
                    timing.resume()
                    meta.status = 502
                    message, code = _upstream_failure(provider.name, exc)
                    return self.error(meta.api, 502, message, code=code)
                timing.resume()
                meta.first_chunk_at = meta.upstream_done_at = time.perf_counter()
                if upstream.status >= 400:
                    return web.Response(status=upstream.status, body=body, headers=headers)
                meta.outcome = "ok"
                try:
                    tap.observe_answer(body)  # total; the guard keeps the client's answer safe
                except Exception as exc:  # any bug in the tap: logged in one line
                    log.warning("usage tap failed on a %s answer, settling from the proxy's "
                                "count: %s: %s", provider.name, type(exc).__name__, exc)
                # the usage is known: the cost is told before the answer is sent
                meta.usage = await self.final_usage(meta, tap)
                headers["X-Budget-Cost"] = _usd(meta.cost_of(meta.usage).total_nusd)
                response = web.Response(status=upstream.status, body=body, headers=headers)
                await response.prepare(request)
                await response.write_eof()
                return response
        finally:
            meta.finished_at = time.perf_counter()
            self.settle_later(meta, tap)

    async def extend_hold(self, meta: Metered, output_tokens: int, input_tokens: int = 0
                          ) -> str | None:
        """Extend an incremental stream's hold by `output_tokens` (and by `input_tokens` when
        the provider confirmed more input than the proxy counted) on every line it holds, by
        the store's atomic reserve rule; None when extended, else the id of the policy that
        refused (the stream is then cut). A store outage fails open (relayed unheld) or
        closed (cut, `budget_store_unavailable`) by BUDGET_FAIL_MODE."""
        reservation = meta.reservation
        before = planning.hold(meta.input_tokens_estimate, meta.held_output_tokens, meta.price,
                               meta.units)
        after = planning.hold(meta.input_tokens_estimate + input_tokens,
                              meta.held_output_tokens + output_tokens, meta.price, meta.units)
        cost_nusd, tokens_added = after.cost_nusd - before.cost_nusd, after.tokens - before.tokens
        if not reservation.keys:  # no policy matches: nothing to hold on
            meta.held_output_tokens += output_tokens
            meta.input_tokens_estimate += input_tokens
            return None
        try:
            result = await self.store.extend(reservation, meta.lines, cost_nusd, tokens_added)
        except StoreError as exc:
            for hook in self.on_store_failure:
                hook("extend")
            if self.settings.fail_mode != "open":
                _log_store_down(f"budget store unavailable, cutting a stream: {exc}")
                return "budget_store_unavailable"
            meta.held_output_tokens += output_tokens
            meta.input_tokens_estimate += input_tokens
            return None
        if not result.ok:
            assert result.refused_index is not None
            line = meta.lines[result.refused_index]
            for refused in self.on_refuse:  # reason `cut`: served, then ended at the limit
                refused(meta.provider, line.policy_id, "cut")
            return line.policy_id
        meta.held_output_tokens += output_tokens
        meta.input_tokens_estimate += input_tokens
        meta.reservation = replace(reservation, cost_nusd=reservation.cost_nusd + cost_nusd,
                                   tokens=reservation.tokens + tokens_added)
        return None

    def stream_usage(self, meta: Metered, tap: UsageTap, relayed_tokens: int | None) -> Usage:
        """The usage of a stream at its end, without I/O: the provider's when it came and is
        usable; for a cut stream the input plus the output its hold covered (what was
        relayed and the slice still held); else the input plus the output relayed."""
        usage = tap.usage
        if usage is not None and usage.trusted:
            return usage
        if meta.cut_by is not None:
            return tap.fallback_usage(meta.input_tokens_estimate, meta.held_output_tokens,
                                      complete=False)
        if relayed_tokens is None:
            relayed_tokens = tokens.count_text(tap.output_text(), meta.model)
        return tap.fallback_usage(meta.input_tokens_estimate, relayed_tokens, complete=True)

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
        usage = meta.usage or await self.final_usage(meta, tap)
        cost = meta.cost_of(usage)
        who = meta.attribution
        metadata = planning.record_metadata(usage)
        if meta.cut_by is not None:
            metadata["cut"] = meta.cut_by
        record = planning.usage_record(
            record_id=record_id_of(reservation.reservation_id),  # its intent's, if it died
            payer=planning.Payer(who.component, who.allocation_id, who.context_id, who.session,
                                 who.task, who.task_type),
            provider=meta.provider, model=meta.model, requested_model=meta.requested_model,
            route=meta.endpoint, usage=usage, cost=cost, pricing_id=meta.price.pricing_id,
            status="ok" if tap.usage is not None or outcome == "ok" else "aborted",
            streamed=meta.streamed, metadata=metadata,
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

    async def final_usage(self, meta: Metered, tap: UsageTap) -> Usage:
        """The usage a call settles at: the provider's when usable, else `usage_from_stream`."""
        usage = tap.usage
        if usage is None or not usage.trusted:
            usage = await self.usage_from_stream(meta, tap)
        return usage

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

    def settle_later(self, meta: Metered, tap: UsageTap) -> None:
        """Settle a finished call in a task of its own, beyond the reach of the handler's
        cancellation (a client hanging up). A call whose spend the store counted at once
        (`Store.account`) is settled after the next call has gone upstream (SETTLE_AFTER_S
        at the latest): a client's next call is judged on the spend without waiting behind
        the bookkeeping of its last one. Any other call is settled now, so that the next
        one is not judged on its hold."""
        self._to_settle.append((meta, tap, meta.outcome))  # first: whatever happens next
        usage, counted = meta.usage, False
        try:
            counted = (meta.outcome != "error" and usage is not None and self.store.account(
                meta.reservation, meta.cost_of(usage).total_nusd, usage.total_tokens))
        finally:
            if not counted:
                self.start_settlements()
            elif self._settle_timer is None:
                self._settle_timer = asyncio.get_running_loop().call_later(
                    SETTLE_AFTER_S, self.start_settlements)

    def start_settlements(self) -> None:
        """Start the settlements waiting in `settle_later`."""
        if self._settle_timer is not None:
            self._settle_timer.cancel()
            self._settle_timer = None
        waiting, self._to_settle = self._to_settle, []
        for meta, tap, outcome in waiting:
            task = asyncio.ensure_future(self.settle(meta, tap, outcome))
            self.background.add(task)
            task.add_done_callback(self.background.discard)

    async def drain(self) -> None:
        """Wait for in-flight settlements (shutdown)."""
        self.start_settlements()
        if self.background:
            await asyncio.gather(*self.background, return_exceptions=True)

    async def settled(self) -> None:
        """Wait for the settlements of every call answered so far, so a read through this
        replica sees them all (read-your-writes for the admin API)."""
        self.start_settlements()
        pending = [task for task in self.background if not task.done()]
        if pending:
            await asyncio.wait(pending)


class Relay:
    """One stream relayed unit by unit (SSE events, NDJSON lines...), each as received.

    The client's headers wait for the upstream's first bytes, so an upstream that breaks
    before sending any is answered 502 in the provider's format (and the hold released); one
    that breaks later is cut at the client too (its connection is closed without the end of
    the body, as the upstream's was) and settled from what was streamed. A failure of the
    usage tap never cuts a stream: the unit is relayed.

    An incremental stream (`Metered.incremental`) counts the text it relays as it passes
    (each new delta once, with tiktoken) and, before relaying a unit its hold does not
    cover, extends the hold by whole slices. When a hard limit refuses, that unit is not
    relayed: the stream ends in the family's own protocol (`Adapter.cut_events`) after a
    `: budget-proxy cut policy=<id>` comment, and the upstream is closed. Before a stream's
    last event the cost is told (`: budget-proxy cost=<usd>`)."""

    def __init__(self, proxy: Proxy, request: web.Request, upstream: aiohttp.ClientResponse,
                 parser: StreamParser, tap: UsageTap, meta: Metered, adapter: Adapter,
                 plan: Plan) -> None:
        self.proxy = proxy
        self.request = request
        self.upstream = upstream
        self.parser = parser
        self.tap = tap
        self.meta = meta
        self.adapter = adapter
        self.plan = plan
        self.tap_failed = False
        self.counted_parts = 0  # tap.text_parts already counted
        self.input_checked = not meta.incremental  # against the provider's confirmed input
        self.relayed_tokens = 0 if meta.incremental else None
        self.slice_tokens = proxy.settings.stream_slice_tokens

    def observe(self, event: bytes) -> bool:
        try:
            return self.tap.observe_event(event)
        except Exception as exc:  # the tap is total; belt and braces
            if not self.tap_failed:
                self.tap_failed = True
                log.warning("usage tap failed on a %s stream event, relaying it: %s: %s",
                            self.meta.provider, type(exc).__name__, exc)
            return True

    def count_new_text(self) -> None:
        parts = self.tap.text_parts
        if len(parts) > self.counted_parts and self.relayed_tokens is not None:
            model = self.meta.model
            self.relayed_tokens += sum(tokens.count_text(part, model)
                                       for part in parts[self.counted_parts:])
            self.counted_parts = len(parts)

    async def units(self, events: list[bytes]) -> tuple[bytes, bool]:
        """What to write for these units, and whether the stream was cut at one of them."""
        out: list[bytes] = []
        meta = self.meta
        for event in events:
            if not self.observe(event):
                continue
            if self.relayed_tokens is not None:
                self.count_new_text()
                more = planning.extension(meta.held_output_tokens, self.relayed_tokens,
                                          meta.cap_tokens, self.slice_tokens)
                more_input = self.unheld_input()
                if more or more_input:
                    refused_by = await self.proxy.extend_hold(meta, more, more_input)
                    if refused_by is not None:
                        out.append(self.cut(refused_by))
                        return b"".join(out), True
            if self.adapter.is_final_event(event):
                out.append(base.cost_comment(self.cost_usd()))
            out.append(event)
        return b"".join(out), False

    def unheld_input(self) -> int:
        """Input the provider confirmed (Anthropic's `message_start`) beyond the proxy's
        count, which the hold must cover too; read until the first text arrives."""
        if self.input_checked:
            return 0
        confirmed = self.tap.confirmed()
        if confirmed is None:
            self.input_checked = bool(self.tap.text_parts)
            return 0
        self.input_checked = True
        usage = confirmed[0]
        if not usage.trusted:
            return 0
        return max(0, min(usage.total_input_tokens, MAX_CALL_TOKENS)
                   - self.meta.input_tokens_estimate)

    def cost_usd(self) -> float:
        meta = self.meta
        meta.usage = self.proxy.stream_usage(meta, self.tap, self.relayed_tokens)
        return nusd_to_usd(meta.cost_of(meta.usage).total_nusd)

    def cut(self, policy_id: str) -> bytes:
        meta = self.meta
        meta.cut_by = policy_id
        log.info("stream of %s cut at its budget by %s after %s output tokens", meta.provider,
                 policy_id, self.relayed_tokens)
        cost = self.cost_usd()
        assert meta.usage is not None
        if not isinstance(self.parser, SSEParser):  # NDJSON, a JSON array: no comments
            return b""
        events = self.adapter.cut_events(self.tap, self.plan, meta.usage, cost)
        return f": budget-proxy cut policy={policy_id}\n\n".encode() + events

    async def run(self, headers: dict[str, str]) -> tuple[web.StreamResponse, bool]:
        """(response, whether the stream ran to its end, cut at its budget included)."""
        request, upstream, meta = self.request, self.upstream, self.meta
        timing = request[TIMING]
        response = web.StreamResponse(status=upstream.status, headers=headers)
        cut = False
        try:
            async for chunk in upstream.content.iter_any():
                if not meta.first_chunk_at:
                    timing.resume()  # the upstream's time ends at its first chunk
                    meta.first_chunk_at = time.perf_counter()
                    await response.prepare(request)
                out, cut = await self.units(self.parser.feed(chunk))
                if out:
                    await response.write(out)
                if cut:
                    upstream.close()  # stop the provider generating what nobody pays for
                    break
            meta.upstream_done_at = time.perf_counter()
            timing.resume()
            if not response.prepared:
                await response.prepare(request)  # an empty stream
            if not cut:
                rest = self.parser.flush()
                out, cut = await self.units([rest]) if rest else (b"", False)
                if out:
                    await response.write(out)
            await response.write_eof()
        except ConnectionResetError:
            log.info("client went away mid-stream; settling from what was streamed")
            return response, False
        except (aiohttp.ClientError, TimeoutError) as exc:
            timing.resume()
            if not response.prepared:  # nothing reached the client: an error, not a stream
                meta.status, meta.outcome = 502, "error"
                message, code = _upstream_failure(meta.provider, exc)
                return self.proxy.error(meta.api, 502, message, code=code), False
            log.warning("upstream %s stream broke after %d bytes of it were relayed: %s",
                        meta.provider, upstream.content.total_bytes, _one_line(exc))
            if request.transport is not None:
                request.transport.close()
            return response, False
        return response, True


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


def _usd(nusd: int) -> str:
    return f"{nusd_to_usd(nusd):.9f}"


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

