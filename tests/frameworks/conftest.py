"""Framework tests: each framework talks to the real proxy in front of the fake provider.

A refused call must surface as the framework's error, reach the proxy exactly once and never
the provider. Every refusal the proxy answers runs its `on_refuse` hooks; the fixture adds one
that counts them, so the count is how many times the framework asked: 1 means it neither
retried nor looped.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import pytest

from budget_proxy.testing.fake_provider import FakeProvider
from tests.conftest import RunningProxy

COMPONENT = "framework-app"
SESSION = "run-1"
ATTRIBUTION = {"X-Budget-Component": COMPONENT, "X-Budget-Session": SESSION}
CLIENT_KEY = "sk-component-key"  # the proxy replaces it with its own provider key


async def add_policy(proxy: RunningProxy, **body: object) -> dict:
    resp = await proxy.api("POST", "/api/policies", json=body)
    assert resp.status_code == 201, resp.text
    return resp.json()


async def records(proxy: RunningProxy) -> list[dict]:
    resp = await proxy.api("GET", "/api/usage/records", params={"limit": 100})
    assert resp.status_code == 200, resp.text
    return resp.json()


@dataclass
class Budgeted:
    """The proxy, the fake provider behind it, and (when refusing) the $0 policy's id."""

    proxy: RunningProxy
    fake: FakeProvider
    policy_id: str = ""
    refused: list[tuple[str, str, str]] = field(default_factory=list)  # (provider, policy, reason)

    @property
    def openai_base_url(self) -> str:
        return f"{self.proxy.url}/v1"

    @property
    def anthropic_base_url(self) -> str:
        return f"{self.proxy.url}/anthropic"

    async def assert_recorded_once(self, model: str) -> None:
        """One call reached the provider and its usage record carries the attribution."""
        assert len(self.fake.requests) == 1
        (record,) = await records(self.proxy)
        assert (record["component"], record["session_id"], record["model"]) == (
            COMPONENT, SESSION, model)

    async def assert_refused_once(self) -> None:
        """The proxy was asked exactly once, refused, and the provider never saw the call."""
        assert self.fake.requests == []
        assert [(policy, reason) for _, policy, reason in self.refused] == [
            (self.policy_id, "limit")]
        assert await records(self.proxy) == []


@pytest.fixture
async def budgeted(proxy: RunningProxy, fake: FakeProvider) -> Budgeted:
    """A proxy without limits: calls go through to the fake provider."""
    fake.prompt_tokens, fake.completion_tokens = 20, 5
    return Budgeted(proxy, fake)


@pytest.fixture
async def refusing(proxy: RunningProxy, fake: FakeProvider) -> Budgeted:
    """A proxy under a $0 daily hard limit: every metered call is refused with 429."""
    policy = await add_policy(proxy, period="daily", type="hard_limit", cost_limit=0)
    budgeted = Budgeted(proxy, fake, policy_id=policy["policy_id"])
    proxy.proxy.on_refuse.append(
        lambda provider, policy_id, reason: budgeted.refused.append((provider, policy_id, reason)))
    return budgeted
