"""Virtual keys: proxy credentials (`bp-...`) an admin mints for a component.

A component configured with a virtual key as its provider API key is attributed to the key's
component whatever headers it sends; the proxy swaps the key for the provider key it holds,
so the component never sees a provider key. Guarantees:

- Only a SHA-256 hash of each secret is stored. The secrets are 256 random bits, so a fast
  hash is enough (there is nothing to brute-force); lookups are by hash, never by comparing
  secrets. The secret is returned once, by the call that mints it.
- No admin route accepts a virtual key (`api.common.auth_middleware` refuses `bp-` tokens):
  a data-plane key can spend a budget, not change one.
- Keys are config documents: minting or revoking one moves the store's config version, and
  every replica's `KeyRing` reloads on the next poll (at once on the replica that changed it).
  The hot path only reads the in-memory ring.
"""

from __future__ import annotations

import hashlib
import logging
import secrets
from datetime import datetime
from typing import TYPE_CHECKING, Any

from pydantic import BaseModel, ConfigDict, Field, field_validator

from budget_proxy.models import (
    DEFAULT_BUDGET_ID,
    BudgetPolicy,
    Count,
    Metadata,
    Period,
    PolicyType,
    Timestamp,
    Tokens,
    Usd,
    new_id,
    utcnow,
)
from budget_proxy.policy_cache import ConfigCache
from budget_proxy.schemas import assume_utc
from budget_proxy.store.base import Store

if TYPE_CHECKING:
    from budget_proxy.proxy import Attribution

log = logging.getLogger(__name__)

KEY_KIND = "virtual_key"
SECRET_PREFIX = "bp-"
SECRET_BYTES = 32  # 256 random bits
HINT_CHARS = 4  # random characters of the secret kept to tell keys apart in listings


def mint_secret() -> str:
    return SECRET_PREFIX + secrets.token_urlsafe(SECRET_BYTES)


def hash_secret(secret: str) -> str:
    return hashlib.sha256(secret.encode()).hexdigest()


class KeyCreateRequest(BaseModel):
    """Body of `POST /api/keys`."""

    model_config = ConfigDict(extra="forbid")

    component: str = Field(min_length=1, description="Component the key's requests are charged to.")
    budget_id: str | None = Field(None, description="Budget the key belongs to (reported).")
    name: str | None = None
    expires_at: Timestamp | None = Field(None, description="Naive times are UTC.")
    metadata: Metadata = Field(default_factory=dict)
    # a key budget: a hard limit scoped to this key (policy `key_id`), made with the key
    period: Period | None = Field(None, description="Window of the key's own limits (daily "
                                  "when a limit is given without it).")
    cost_limit: Usd | None = Field(None, description="USD per window for this key.")
    token_limit: Tokens | None = Field(None, description="Tokens per window for this key.")
    request_limit: Count | None = Field(None, description="Calls per window for this key.")

    _utc = field_validator("expires_at")(assume_utc)

    def budget_policy(self, key_id: str) -> BudgetPolicy | None:
        """The key's own hard limit, if the request sets one."""
        if self.cost_limit is None and self.token_limit is None and self.request_limit is None:
            return None
        return BudgetPolicy(
            name=f"key {self.name or key_id}", budget_id=self.budget_id or DEFAULT_BUDGET_ID,
            type=PolicyType.HARD_LIMIT, period=self.period or Period.DAILY, key_id=key_id,
            cost_limit=self.cost_limit, token_limit=self.token_limit,
            request_limit=self.request_limit)


class VirtualKey(BaseModel):
    """A virtual key as every route reports it: never the secret, never its hash."""

    model_config = ConfigDict(extra="ignore")

    key_id: str = Field(default_factory=lambda: new_id("vk"))
    name: str | None = None
    component: str
    budget_id: str | None = None
    hint: str = Field(description="The secret's first characters, to tell keys apart.")
    created_at: datetime = Field(default_factory=utcnow)
    expires_at: datetime | None = None
    revoked: bool = False
    revoked_at: datetime | None = None
    metadata: dict[str, Any] = Field(default_factory=dict)

    def usable(self, now: datetime) -> bool:
        return not self.revoked and (self.expires_at is None or self.expires_at > now)


class StoredKey(VirtualKey):
    """The stored document: the public fields plus the secret's hash."""

    key_hash: str

    def public(self) -> VirtualKey:
        return VirtualKey.model_validate(self.model_dump(exclude={"key_hash"}))


class KeyCreated(BaseModel):
    """The answer to minting: the only time the secret is shown."""

    key: VirtualKey
    secret: str
    note: str = "Store the secret now: it is not shown again."
    policy: BudgetPolicy | None = Field(None, description="The key's own hard limit, when "
                                        "the request set one.")


class KeyRing(ConfigCache):
    """The keys, in memory by hash, reloaded when the store's config version moves."""

    def __init__(self, store: Store) -> None:
        from budget_proxy.proxy import Attribution  # the proxy's type; imported late (clients)

        super().__init__(store)
        self._attribution = Attribution
        self.by_hash: dict[str, StoredKey] = {}

    async def _load(self) -> None:
        keys = [StoredKey.model_validate_json(b) for b in await self.store.list_docs(KEY_KIND)]
        self.by_hash = {k.key_hash: k for k in keys}

    def lookup(self, secret: str) -> StoredKey | None:
        """The usable key with this secret, or None (unknown, revoked, expired)."""
        key = self.by_hash.get(hash_secret(secret))
        return key if key is not None and key.usable(utcnow()) else None

    def identify(self, secret: str) -> Attribution | None:
        """The proxy's `identify_key` hook: who pays for a request made with `secret`."""
        key = self.lookup(secret)
        return None if key is None else self._attribution(component=key.component,
                                                          key_id=key.key_id)

    async def mint(self, req: KeyCreateRequest) -> KeyCreated:
        secret = mint_secret()
        stored = StoredKey(
            name=req.name, component=req.component, budget_id=req.budget_id,
            hint=secret[: len(SECRET_PREFIX) + HINT_CHARS], expires_at=req.expires_at,
            metadata=req.metadata, key_hash=hash_secret(secret),
        )
        policy = req.budget_policy(stored.key_id)
        if policy is not None:  # the limit first: the key is never usable without it
            await self.store.put_policy(policy)
        await self.store.put_doc(KEY_KIND, stored.key_id, stored.model_dump_json(), config=True)
        await self.refresh()
        return KeyCreated(key=stored.public(), secret=secret, policy=policy)

    async def get(self, key_id: str) -> StoredKey | None:
        body = await self.store.get_doc(KEY_KIND, key_id)
        return None if body is None else StoredKey.model_validate_json(body)

    async def list_keys(self) -> list[VirtualKey]:
        return [StoredKey.model_validate_json(b).public()
                for b in await self.store.list_docs(KEY_KIND)]

    async def revoke(self, key_id: str) -> VirtualKey | None:
        """Revoke (kept for the audit trail); requests with it are refused from now on."""
        key = await self.get(key_id)
        if key is None:
            return None
        if not key.revoked:
            key = key.model_copy(update={"revoked": True, "revoked_at": utcnow()})
            await self.store.put_doc(KEY_KIND, key_id, key.model_dump_json(), config=True)
            await self.refresh()
        return key.public()
