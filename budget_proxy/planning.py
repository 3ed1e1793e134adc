"""Planning a metered request: which windows, which allocation, which model after a soft
limit, what hold, how much output fits, and the one refusal message. Pure code, no I/O.

The proxy (`budget_proxy.proxy`) and the pre-flight question (`POST /api/usage/check`,
`budget_proxy.api.usage`) both plan through these functions, so they answer the same for the
same request. The store applies the same limit rule (`enforcement.would_refuse`) atomically;
these functions only read totals it returned.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any, Literal
from zoneinfo import ZoneInfo

from budget_proxy.allocations import BudgetAllocation, covers, drawn_lines
from budget_proxy.enforcement import (
    CounterLine,
    RequestScope,
    Totals,
    counter_lines,
    soft_limit_move,
    would_refuse,
)
from budget_proxy.models import (
    MAX_CALL_TOKENS,
    BudgetPolicy,
    PolicyType,
    UsageRecord,
    nusd_to_usd,
)
from budget_proxy.pricing import ModelPrice
from budget_proxy.usage import NO_UNITS, Cost, Usage, worst_case_nusd
from budget_proxy.wire import DEFAULT_MAX_OUTPUT_TOKENS

OnInsufficient = Literal["refuse", "fit"]
StreamEnforcement = Literal["incremental", "worst_case"]


# which windows, which allocation -----------------------------------------------------------
@dataclass(frozen=True, slots=True)
class Windows:
    """The counter lines a call reserves on, and the allocation it draws on (if any)."""

    lines: list[CounterLine]
    component: str
    allocation: BudgetAllocation | None = None


LinesOf = Callable[[Sequence[BudgetPolicy], RequestScope, datetime, ZoneInfo],
                   list[CounterLine]]


def windows(policies: Sequence[BudgetPolicy], scope: RequestScope, now: datetime,
            tz: ZoneInfo, alloc: BudgetAllocation | None, *,
            component_named: bool, lines_of: LinesOf = counter_lines) -> Windows:
    """Matching policy windows; when the call draws on `alloc` (inside its tier, provider
    and model), the allocation's enforced line in their place. A call that names no
    component does the allocation's work and is charged to the allocation's component.
    `lines_of` is `counter_lines` or a `LineCache`'s memoised equivalent (the proxy's)."""
    lines = lines_of(policies, scope, now, tz)
    if alloc is None or not covers(alloc, scope):
        return Windows(lines, scope.component)
    component = scope.component
    if component != alloc.component and not component_named:
        component = alloc.component
        lines = lines_of(policies, _with_component(scope, component), now, tz)
    return Windows(drawn_lines(alloc, lines), component, alloc)


def _with_component(scope: RequestScope, component: str) -> RequestScope:
    return RequestScope(scope.provider, scope.model, component, scope.tier, scope.task_type,
                        scope.session, scope.task, scope.key_id)


def soft_limited(policies_by_id: dict[str, BudgetPolicy], lines: Sequence[CounterLine]) -> bool:
    """Whether a soft limit is among the lines (only then do totals decide the model)."""
    return any((p := policies_by_id.get(ln.policy_id)) is not None
               and p.type is PolicyType.SOFT_LIMIT for ln in lines)


def moved_model(policies_by_id: dict[str, BudgetPolicy], lines: Sequence[CounterLine],
                before: Sequence[Totals], model: str) -> tuple[str | None, list[str]]:
    """The model a soft limit moves this call to (None: it stays), judged on the totals
    before its hold, and notes for soft limits reached without a cheaper model."""
    moved, notes = soft_limit_move(policies_by_id, lines, before)
    return (moved if moved and moved != model else None), notes


# what hold --------------------------------------------------------------------------------
@dataclass(frozen=True, slots=True)
class Hold:
    """What a call holds: its input, the output it may produce (all choices), the cost."""

    input_tokens: int
    output_tokens: int
    cost_nusd: int

    @property
    def tokens(self) -> int:
        return self.input_tokens + self.output_tokens


def output_cap(max_output_tokens: int | None, choices: int, price: ModelPrice) -> int:
    """The most output a call allows, all choices together: the request's cap, else the
    catalog's, else the API default (a model priced by the unit produces no tokens unless
    listed); clamped to `MAX_CALL_TOKENS`."""
    per_choice = max_output_tokens
    if per_choice is None:
        per_choice = price.max_output_tokens or (
            DEFAULT_MAX_OUTPUT_TOKENS if price.price_type == "token" else 0)
    return min(max(per_choice, 0) * max(choices, 1), MAX_CALL_TOKENS)


def hold(input_tokens: int, output_tokens: int, price: ModelPrice,
         units: Usage = NO_UNITS) -> Hold:
    """The hold of `input_tokens` plus `output_tokens` at their dearest rates, plus units."""
    input_tokens = min(max(input_tokens, 0), MAX_CALL_TOKENS)
    output_tokens = min(max(output_tokens, 0), MAX_CALL_TOKENS)
    return Hold(input_tokens, output_tokens,
                worst_case_nusd(input_tokens, output_tokens, price, units))


def first_hold(input_tokens: int, cap_tokens: int, price: ModelPrice, units: Usage, *,
               streaming: bool, enforcement: StreamEnforcement, slice_tokens: int) -> Hold:
    """What a call reserves before it is forwarded: its worst case, or for a stream under
    incremental enforcement its input plus one slice of output (never past its cap)."""
    if streaming and enforcement == "incremental":
        return hold(input_tokens, min(cap_tokens, max(1, slice_tokens)), price, units)
    return hold(input_tokens, cap_tokens, price, units)


def refused_index(lines: Sequence[CounterLine], totals: Sequence[Totals], held: Hold,
                  requests: int = 1) -> int | None:
    """The first enforced line that refuses `held` on these totals (the store's rule)."""
    for index, (line, tot) in enumerate(zip(lines, totals, strict=True)):
        if would_refuse(line, tot, held.cost_nusd, held.tokens, requests):
            return index
    return None


def fitting_output(lines: Sequence[CounterLine], totals: Sequence[Totals], input_tokens: int,
                   cap_tokens: int, price: ModelPrice, units: Usage = NO_UNITS,
                   requests: int = 1) -> int:
    """The most output (at most `cap_tokens`) every enforced line still pays besides the
    input, judged on totals without this call's hold; 0 when not even the input and one
    output token fit (or a call limit refuses). Monotone in output, so a bisection."""
    def fits(output: int) -> bool:
        return refused_index(lines, totals, hold(input_tokens, output, price, units),
                             requests) is None

    if cap_tokens < 1 or not fits(1):
        return 0
    low, high = 1, cap_tokens  # fits(low) holds
    while low < high:
        mid = (low + high + 1) // 2
        if fits(mid):
            low = mid
        else:
            high = mid - 1
    return low


def extension(held_output: int, relayed_output: int, cap_tokens: int,
              slice_tokens: int) -> int:
    """Output tokens to add to a stream's hold so it covers what is relayed plus a slice
    ahead (in whole slices, never past the call's cap); 0 when the hold already covers it."""
    if relayed_output <= held_output or held_output >= cap_tokens:
        return 0
    slice_tokens = max(1, slice_tokens)
    deficit = relayed_output - held_output
    slices = -(-deficit // slice_tokens)
    return min(slices * slice_tokens, cap_tokens - held_output)


# the one refusal message ------------------------------------------------------------------
def line_label(line: CounterLine, policy: BudgetPolicy | None) -> tuple[str, str]:
    """(name, period) of a line for messages: its policy's, or the allocation's."""
    label = policy.name if policy is not None and policy.name else line.policy_id
    period = policy.period.value if policy is not None else (
        "allocation" if line.key.startswith("alloc:") else "window")
    return label, period


def refusal_message(line: CounterLine, totals: Totals, held: Hold,
                    policy: BudgetPolicy | None) -> str:
    """Why a hard limit refuses `held`: what is left of each limit the line has, and what
    this request may use. The proxy's 429 and `/api/usage/check` say exactly this."""
    label, period = line_label(line, policy)
    parts = []
    if line.limit_nusd is not None:
        left = max(0, line.limit_nusd - totals.used_nusd)
        parts.append(f"${nusd_to_usd(left):.6f} of ${nusd_to_usd(line.limit_nusd):.6f} left, "
                     f"this request may cost up to ${nusd_to_usd(held.cost_nusd):.6f}")
    if line.limit_tokens is not None:
        left_t = max(0, line.limit_tokens - totals.used_tokens)
        parts.append(f"{left_t} of {line.limit_tokens} tokens left, "
                     f"this request may use up to {held.tokens}")
    if line.limit_requests is not None:
        parts.append(f"{totals.requests} of {line.limit_requests} calls made")
    return f"Budget exceeded: {period} hard limit {label}: " + "; ".join(parts)


# the usage record -------------------------------------------------------------------------
@dataclass(frozen=True, slots=True)
class Payer:
    """Who a record charges (the attribution of a call)."""

    component: str
    allocation_id: str | None = None
    context_id: str | None = None
    session_id: str | None = None
    task_id: str | None = None
    task_type: str | None = None


def usage_record(*, record_id: str | None, payer: Payer, provider: str, model: str,
                 requested_model: str | None, route: str, usage: Usage, cost: Cost,
                 pricing_id: str | None, status: str = "ok", streamed: bool = False,
                 metadata: dict[str, Any] | None = None,
                 timestamp: datetime | None = None) -> UsageRecord:
    """The usage record of one call, from its usage and cost: built here only."""
    return UsageRecord(
        **({"record_id": record_id} if record_id else {}),
        allocation_id=payer.allocation_id, context_id=payer.context_id,
        component=payer.component, session_id=payer.session_id, task_id=payer.task_id,
        task_type=payer.task_type, provider=provider, model=model,
        requested_model=requested_model, route=route,
        input_tokens=usage.input_tokens, cached_input_tokens=usage.cached_input_tokens,
        cache_write_tokens=usage.cache_write_tokens, output_tokens=usage.output_tokens,
        reasoning_tokens=usage.reasoning_tokens, total_tokens=usage.total_tokens,
        input_cost=nusd_to_usd(cost.input_nusd), output_cost=nusd_to_usd(cost.output_nusd),
        total_cost=nusd_to_usd(cost.total_nusd), pricing_id=pricing_id, status=status,
        streamed=streamed, metadata=metadata or {},
        **({"timestamp": timestamp} if timestamp is not None else {}),
    )


def record_metadata(usage: Usage) -> dict[str, Any]:
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
