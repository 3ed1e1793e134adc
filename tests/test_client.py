"""`budget_proxy.client` against a live server: the sync client against a real
`budget-proxy serve` process, the async client against the in-process server."""

from __future__ import annotations

import pytest

from budget_proxy.allocations import BudgetAllocation
from budget_proxy.client import (
    AsyncBudgetClient,
    BudgetAuthError,
    BudgetClient,
    BudgetConflictError,
    BudgetConnectionError,
    BudgetNotFoundError,
    BudgetValidationError,
)
from budget_proxy.schemas import UsageCheckResult
from tests.conftest import free_port

TOKEN = "client-test-admin-token"


@pytest.fixture
def server(proxy_process_factory, tmp_path):
    return proxy_process_factory({"BUDGET_DATA_DIR": str(tmp_path / "data"),
                                  "BUDGET_ADMIN_TOKEN": TOKEN})


def test_the_seed_readme_calls(server):
    with BudgetClient(server.url, TOKEN) as client:
        allowed, info = client.check_budget(
            provider="anthropic", model="claude-3-opus", input_text="Hello, world!",
            component="my-component")
        assert allowed is True and isinstance(info, UsageCheckResult)
        assert info.component == "my-component" and info.input_tokens > 0
        recorded = client.record_completion(
            provider="anthropic", model="claude-3-opus", input_text="Hello, world!",
            output_text="Hi there! How can I assist you today?", component="my-component")
        assert recorded.record.total_cost > 0 and recorded.record.output_tokens > 0
        (rec,) = client.usage_records()
        assert rec.record_id == recorded.record.record_id


def test_admin_operations_return_typed_results(server):
    with BudgetClient(server.url, TOKEN) as client:
        assert client.health().status == "ok"
        policy = client.set_limit("daily", 100_000, tokens=True, component="rhetor",
                                  name="rhetor tokens")
        assert policy.token_limit == 100_000 and policy.component == "rhetor"
        assert [p.policy_id for p in client.list_policies()] == [policy.policy_id]
        budget = client.create_budget("Team", budget_id="team", owner="ana")
        assert budget.budget_id == "team"
        assert client.get_budget("team").budget.owner == "ana"
        alloc = client.allocate("ctx-1", "rhetor", 1000, tier="remote_heavyweight", priority=7)
        assert isinstance(alloc, BudgetAllocation) and alloc.priority == 7
        assert [a.allocation_id for a in client.list_allocations(active=True)] == [
            alloc.allocation_id]
        status = client.status()
        assert status.policies[0].reserved == 1000
        client.record_completion("openai", "gpt-4o-mini", component="rhetor",
                                 input_tokens=100, output_tokens=50, context_id="ctx-1")
        released = client.release_allocation(alloc.allocation_id)
        assert released.tokens_used == 150 and released.state == "released"
        assert client.status().policies[0].spent == 150
        usage = client.get_usage("daily", group_by="component")
        assert usage.totals.total_tokens == 150 and usage.groups[0].component == "rhetor"
        assert client.report("daily").totals.requests == 1
        assert client.report_csv().startswith("section,")
        key = client.create_key("billing", name="k")
        assert key.secret.startswith("bp-")
        assert client.list_keys()[0].key_id == key.key.key_id
        assert client.revoke_key(key.key.key_id).revoked is True
        assert client.list_alerts() == []
        assert client.analyze(days=7).llm_used is False
        assert client.optimize().engine == "deterministic"
        assert client.recommend_model(task_type="summarization").complexity == "simple"
        assert client.delete_budget("team").deleted == "team"
        assert client.delete_policy(policy.policy_id).deleted == policy.policy_id


def test_errors_are_typed(server):
    with BudgetClient(server.url, TOKEN) as client:
        with pytest.raises(BudgetValidationError) as invalid:
            client.allocate("ctx", "c", 0)
        assert invalid.value.status == 422
        assert invalid.value.details[0]["field"] == "tokens_allocated"
        with pytest.raises(BudgetNotFoundError):
            client.get_allocation("alloc_missing")
        client.set_limit("daily", 10, tokens=True)
        with pytest.raises(BudgetConflictError):
            client.allocate("ctx", "c", 1000)
        with pytest.raises(BudgetAuthError):
            BudgetClient(server.url, "wrong-token").set_limit("daily", 1)
    with pytest.raises(BudgetConnectionError):
        BudgetClient(f"http://127.0.0.1:{free_port()}", timeout_s=2).health()


def test_url_and_token_from_the_environment(server, monkeypatch):
    monkeypatch.setenv("BUDGET_URL", server.url)
    monkeypatch.setenv("BUDGET_ADMIN_TOKEN", TOKEN)
    with BudgetClient() as client:
        assert client.set_limit("daily", 5).cost_limit == 5


async def test_the_async_client(proxy):
    async with AsyncBudgetClient(proxy.url) as client:
        allowed, info = await client.check_budget("openai", "gpt-4o-mini", "Hello, world!",
                                                  "c", max_output_tokens=10)
        assert allowed and info.max_output_tokens == 10
        await client.set_limit("daily", 0.000001)
        allowed, info = await client.check_budget("openai", "gpt-4o", "Hello", "c")
        assert not allowed and info.refused_by is not None
        alloc = await client.allocate("ctx", "c", 10)
        assert (await client.get_allocation(alloc.allocation_id)).remaining_tokens == 10
        assert (await client.release_allocation(alloc.allocation_id)).state == "released"
        assert (await client.list_budgets())[0].budget_id == "default"
        with pytest.raises(BudgetNotFoundError):
            await client.get_budget("nope")


def test_any_call_over_the_same_transport(server):
    with BudgetClient(server.url, TOKEN) as client:
        (price,) = client.request("GET", "/api/prices", params={"model": "gpt-4o-mini",
                                                                "provider": None})
        assert price["model"] == "gpt-4o-mini"
        policy = client.request("POST", "/api/policies", json={"period": "daily",
                                                                 "cost_limit": 2})
        assert client.request("GET", f"/api/policies/{policy['policy_id']}")["cost_limit"] == 2
        with pytest.raises(BudgetNotFoundError):
            client.request("GET", "/api/policies/pol_missing")
        with pytest.raises(BudgetValidationError) as invalid:
            client.request("POST", "/api/policies", json={"period": "fortnightly"})
        assert invalid.value.status in (400, 422)
        events = list(client.update_prices())  # no price sources configured
        assert events[-1]["type"] == "report"
        assert events[-1]["report"]["status"] == "no_sources"
    with pytest.raises(BudgetAuthError):
        BudgetClient(server.url, "wrong-token").request("POST", "/api/policies", json={})
