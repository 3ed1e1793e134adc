"""Every Redis key, channel and TTL of the Redis store, in one place (like `arq.constants`).

Layout rules:

- Every key starts with `bp:` and carries exactly one hash tag (`{...}`, the first braces in
  the name), so Redis Cluster places all keys one Lua script touches in one slot.
- Counters, their reservations, the reaper's deadline index and the settle dedupe keys of one
  *counter group* share the tag `{c:<group>}`. The group of a counter key
  (`"{policy_id}:{window_id}"`, `"alloc:{id}"`) is its policy id (or `alloc:<id>`), so every
  window of one policy lives in one slot and a request is reserved in one script per policy
  group. On a standalone server all of a request's counters go to one script anyway.
- Documents (policies, budgets, ... and `config_version`) share `{d}`; a usage record, its
  index entries, its settle marker and its hand-off stream share `{u:<shard>}` (16 shards by
  record id); store-wide bookkeeping shares `{m}`.
- No limit amount ever appears in a key: editing a policy's limit never resets its spend.

Units: amounts are integer nano-USD (`*_nusd`) and integer tokens; times are milliseconds
since the epoch of Redis `TIME` (the one clock) unless a name says `_s`.
"""

from __future__ import annotations

import functools
import hashlib
import zlib

from budget_proxy.store.base import safe_text

PREFIX = "bp"

# --- counter groups: tag {c:<group>} ------------------------------------------------------
# hash, fields sn/rn (spent/reserved nano-USD), st/rt (spent/reserved tokens), q (calls) and
# x (the window end reserve.lua last set as its expiry, ms since epoch: set again only when
# it changes)
COUNTER = PREFIX + ":{{c:{group}}}:ctr:{key}"
# hash of one request's hold on one group: c (nano-USD), t (tokens), k (JSON list of the
# counter hashes held), d (deadline, ms), i (request holds only: the intent, the JSON of the
# `unsettled` usage record that charges the hold if its process dies). No TTL: only settle,
# release or the reaper delete it, so a hold can never vanish while its amount is still
# counted as reserved. Its process renews d while the request is live (renew.lua).
RESERVATION = PREFIX + ":{{c:{group}}}:res:{reservation_id}"
RESERVATION_PREFIX = PREFIX + ":{{c:{group}}}:res:"
# sorted set: reservation id -> deadline (ms, Redis TIME); what the reaper scans
DEADLINES = PREFIX + ":{{c:{group}}}:deadlines"
# string set NX by the settle script of a group: the settlement was applied to this group
SETTLED = PREFIX + ":{{c:{group}}}:done:{settle_id}"

# --- documents: tag {d} --------------------------------------------------------------------
DOCS = PREFIX + ":{{d}}:doc:{kind}"  # hash doc_id -> JSON body
DOC_ORDER = PREFIX + ":{{d}}:order:{kind}"  # sorted set doc_id -> creation sequence
DOC_SEQ = PREFIX + ":{d}:seq"  # integer, creation sequence of documents
CONFIG_VERSION = PREFIX + ":{d}:config_version"  # integer, INCR on every config change

# --- usage records: tag {u:<shard>} ----------------------------------------------------------
# Records are spread over USAGE_SHARDS tags by record id (`usage_tag`), so a cluster spreads
# them over its shards; every key of one record shares its tag. Tag `u` is the layout before
# shards: read and trimmed by retention, never written.
USAGE_SHARDS = 16
LEGACY_USAGE_TAG = "u"
USAGE_RECORDS = PREFIX + ":{{{tag}}}:rec"  # hash record_id -> UsageRecord JSON (no database)
USAGE_INDEX_ALL = PREFIX + ":{{{tag}}}:idx:all"  # sorted set record_id -> timestamp (s)
USAGE_INDEX = PREFIX + ":{{{tag}}}:idx:{field}:{value}"  # same, for one value of one field
USAGE_INDEX_PREFIX = PREFIX + ":{{{tag}}}:idx:"
USAGE_SETTLED = PREFIX + ":{{{tag}}}:done:{settle_id}"  # string: a settlement was applied
# With a database: the hand-off stream of a shard (entries {r: record JSON}), read by the
# consumer group LEDGER_GROUP, acknowledged and deleted once the ledger has the record
LEDGER_STREAM = PREFIX + ":{{{tag}}}:ledger"
LEDGER_GROUP = "ledger"
USAGE_INDEX_FIELDS = ("component", "provider", "model", "context_id", "session_id")

# --- store-wide bookkeeping: tag {m} ---------------------------------------------------------
GROUPS = PREFIX + ":{m}:groups"  # set of counter groups that may hold reservations (reaper)

# --- pub/sub channels (not keys: no slot) ----------------------------------------------------
CONFIG_CHANNEL = PREFIX + ":config"  # {"origin": replica, "version": n}
EVENTS_CHANNEL = PREFIX + ":events"  # {"origin": replica, "events": [{...}, ...]}

# --- TTLs ------------------------------------------------------------------------------------
# A calendar window's counter lives this long after the window ends (status and late
# settlements of requests that started in the window), then expires on its own.
COUNTER_AFTER_WINDOW_S = 7 * 24 * 3600
# Counters of windows without an end (per_session, per_task, allocations) expire after this
# long without a reservation or settlement.
COUNTER_IDLE_S = 90 * 24 * 3600
# How long a group's settle dedupe key lives: longer than any journal entry waits for replay.
# Without a database, settlements with a usage record are also deduplicated by the record
# itself, as long as it is kept.
SETTLED_TTL_S = 7 * 24 * 3600
# With a database, a settlement's record leaves Redis once the ledger has it; its marker
# (USAGE_SETTLED) keeps the settlement from being applied twice this long: longer than the
# race of a real settlement with the charge of its dead hold (TTL + reaper lease) and than a
# journal replay after a restart. It is what Redis keeps per call with a database.
LEDGER_SETTLED_TTL_S = 6 * 3600
# Without a database, records are kept this long by default (BUDGET_RECORD_RETENTION_DAYS)
RECORD_RETENTION_DAYS = 30

# prefixes of counter keys whose group is the first two segments (`alloc:<id>`), not one
MULTI_SEGMENT_GROUPS = frozenset({"alloc"})


# counter keys of the current windows recur on every call: their names are worked out once
NAME_CACHE_SIZE = 4096


@functools.lru_cache(maxsize=NAME_CACHE_SIZE)
def counter_group(counter_key: str) -> str:
    """The group (hash tag content) of a counter key: its policy id, or `alloc:<id>`.

    Braces cannot appear inside a hash tag, so a group name with them is replaced by a digest.
    """
    head, _, rest = safe_text(counter_key).partition(":")
    group = head
    if head in MULTI_SEGMENT_GROUPS and rest:
        group = f"{head}:{rest.partition(':')[0]}"
    if "{" in group or "}" in group:
        group = "h-" + hashlib.sha1(group.encode()).hexdigest()[:16]
    return group


@functools.lru_cache(maxsize=NAME_CACHE_SIZE)
def counter(counter_key: str, group: str | None = None) -> str:
    return COUNTER.format(group=group or counter_group(counter_key), key=safe_text(counter_key))


def counter_key_of(counter_hash: str) -> str:
    """The counter key a counter hash name was made from (`counter` inverted). A group has
    at most one colon (`alloc:<id>`) and never `:ctr:`, so the first `:ctr:` ends the tag."""
    return counter_hash.partition(":ctr:")[2]


def reservation(group: str, reservation_id: str) -> str:
    return RESERVATION.format(group=group, reservation_id=reservation_id)


def reservation_prefix(group: str) -> str:
    return RESERVATION_PREFIX.format(group=group)


def deadlines(group: str) -> str:
    return DEADLINES.format(group=group)


def settled(group: str, settle_id: str) -> str:
    return SETTLED.format(group=group, settle_id=settle_id)


def docs(kind: str) -> str:
    return DOCS.format(kind=kind)


def doc_order(kind: str) -> str:
    return DOC_ORDER.format(kind=kind)


def usage_tag(record_id: str) -> str:
    """The hash tag of a record's keys: one of USAGE_SHARDS, stable for a record id."""
    return f"u:{zlib.crc32(safe_text(record_id).encode()) % USAGE_SHARDS}"


def usage_tags(legacy: bool = True) -> list[str]:
    """Every record tag (with the layout before shards when `legacy`)."""
    return [*([LEGACY_USAGE_TAG] if legacy else []), *(f"u:{i}" for i in range(USAGE_SHARDS))]


def usage_records(tag: str) -> str:
    return USAGE_RECORDS.format(tag=tag)


def usage_index_all(tag: str) -> str:
    return USAGE_INDEX_ALL.format(tag=tag)


def usage_index(tag: str, field: str, value: str) -> str:
    return USAGE_INDEX.format(tag=tag, field=field, value=safe_text(value))


def usage_index_prefix(tag: str) -> str:
    return USAGE_INDEX_PREFIX.format(tag=tag)


def usage_settled(settle_id: str) -> str:
    """The settle marker of a settlement, in its record's tag."""
    return USAGE_SETTLED.format(tag=usage_tag(settle_id), settle_id=settle_id)


def ledger_stream(tag: str) -> str:
    return LEDGER_STREAM.format(tag=tag)
