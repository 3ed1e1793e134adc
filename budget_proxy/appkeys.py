"""Typed application state keys, shared by the app factory and the route modules."""

from __future__ import annotations

import asyncio

from aiohttp import web

from budget_proxy.alerts import Alerts
from budget_proxy.allocations import Allocations
from budget_proxy.config import Settings
from budget_proxy.events import EventBus
from budget_proxy.metrics import Metrics
from budget_proxy.policy_cache import PolicyCache
from budget_proxy.pricing import PriceCatalog
from budget_proxy.proxy import Proxy
from budget_proxy.store.base import Store
from budget_proxy.virtual_keys import KeyRing

SETTINGS = web.AppKey("settings", Settings)
STORE = web.AppKey("store", Store)
POLICIES = web.AppKey("policies", PolicyCache)
CATALOG = web.AppKey("catalog", PriceCatalog)
PROXY = web.AppKey("proxy", Proxy)
EVENTS = web.AppKey("events", EventBus)
METRICS = web.AppKey("metrics", Metrics)
ALERTS = web.AppKey("alerts", Alerts)
ALLOCATIONS = web.AppKey("allocations", Allocations)
KEYS = web.AppKey("keys", KeyRing)
# set once start-up's store work (default budget, policy files, caches) is done; until then
# (the store was down at start) readiness answers 503
STORE_SEEDED = web.AppKey("store_seeded", asyncio.Event)
