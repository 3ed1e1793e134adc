"""Policies as code: every error case is a fixture file, and the error names the file and the
key; reconciling creates, updates, leaves alone and removes, and never duplicates."""

from __future__ import annotations

from pathlib import Path

import pytest

from budget_proxy.models import BudgetPolicy
from budget_proxy.policy_files import (
    APPLY_PREFIX,
    PolicyFileError,
    load_at_startup,
    load_file,
    load_paths,
    policy_dirs,
    reconcile,
)
from budget_proxy.store.sqlite import SqliteStore

FIXTURES = Path(__file__).parent / "policy_files"
EXAMPLES = Path(__file__).parents[2] / "policies" / "examples"


@pytest.mark.parametrize(("fixture", "key", "reason"), [
    ("bad_toml.toml", "invalid TOML", "line 2"),
    ("unknown_key.toml", "policy.daily.cost_limt", "Extra inputs are not permitted"),
    ("bad_period.toml", "policy.daily.period", "Input should be 'minutely', 'hourly'"),
    ("negative_limit.toml", "policy.daily.cost_limit", "greater than or equal to 0"),
    ("no_limit.toml", "policy.daily", "needs cost_limit, token_limit or request_limit"),
    ("bad_threshold.toml", "policy.daily.warning_threshold", "less than or equal to 1"),
    ("unknown_table.toml", "policies", "unknown key"),
    ("bad_id.toml", "policy.daily budget!", "id must be"),
    ("id_in_body.toml", "policy.daily.policy_id", "not allowed in a file"),
    ("not_a_table.toml", "policy", "must be tables"),
    ("budget_unknown_key.toml", "budget.research.limit", "Extra inputs are not permitted"),
])
def test_each_error_names_the_file_and_the_key(fixture: str, key: str, reason: str):
    with pytest.raises(PolicyFileError) as err:
        load_paths([FIXTURES / fixture])
    message = str(err.value)
    assert message.startswith(str(FIXTURES / fixture) + ": ")
    assert key in message and reason in message


def test_an_id_defined_in_two_files_names_both():
    with pytest.raises(PolicyFileError) as err:
        load_paths([FIXTURES / "duplicate_id"])
    assert str(err.value) == (f"{FIXTURES / 'duplicate_id' / 'b.toml'}: policy.daily: already "
                              f"defined in {FIXTURES / 'duplicate_id' / 'a.toml'}")


def test_a_missing_path_or_configured_directory_is_an_error(tmp_path: Path):
    with pytest.raises(PolicyFileError, match="no such file"):
        load_paths([tmp_path / "nope.toml"])
    with pytest.raises(PolicyFileError, match="does not exist"):
        policy_dirs(tmp_path / "missing", default=None)


def test_the_shipped_examples_load_and_are_not_loaded_by_default():
    loaded = load_paths([EXAMPLES])
    by_id = {p.policy_id: p for p in loaded.policies}
    assert set(by_id) == {"research-daily", "openai-monthly-cap", "anthropic-monthly-cap",
                          "gpt-4o-soft", "task-token-cap"}
    assert by_id["gpt-4o-soft"].fallback_model == "gpt-4o-mini"
    assert by_id["task-token-cap"].period.value == "per_task"
    assert [b.budget_id for b in loaded.budgets] == ["research"]
    repo_policies = EXAMPLES.parent
    assert load_paths([repo_policies]).policies == []  # sub-directories are never read


def test_the_source_records_where_a_policy_came_from(tmp_path: Path):
    path = tmp_path / "p.toml"
    path.write_text('[policy.a]\nperiod = "daily"\ncost_limit = 1\n')
    assert load_file(path).policies[0].source == f"file:{path}"
    assert load_paths([path], APPLY_PREFIX).policies[0].source == f"apply:{path}"


@pytest.fixture
async def store(tmp_path: Path):
    store = SqliteStore(tmp_path / "data")
    await store.start()
    yield store
    await store.close()


def write(dir_: Path, name: str, text: str) -> Path:
    dir_.mkdir(exist_ok=True)
    path = dir_ / name
    path.write_text(text)
    return path


async def test_reconcile_creates_updates_keeps_and_removes_by_id(store, tmp_path: Path):
    dir_ = tmp_path / "policies"
    write(dir_, "a.toml", '[policy.a]\nperiod = "daily"\ncost_limit = 1\n'
                          '[policy.b]\nperiod = "weekly"\ntoken_limit = 10\n')
    first = await reconcile(store, load_paths([dir_]))
    assert (first.created, first.updated, first.removed) == (["a", "b"], [], [])
    created_at = (await store.get_policy("a")).created_at
    again = await reconcile(store, load_paths([dir_]))
    assert again.unchanged == ["a", "b"] and again.created == again.updated == []
    write(dir_, "a.toml", '[policy.a]\nperiod = "daily"\ncost_limit = 2\n')
    changed = await reconcile(store, load_paths([dir_]))
    assert (changed.updated, changed.removed) == (["a"], ["b"])
    policy = await store.get_policy("a")
    assert policy.cost_limit == 2 and policy.created_at == created_at
    assert [p.policy_id for p in await store.list_policies()] == ["a"]  # never duplicated


async def test_reconcile_leaves_api_and_applied_policies_alone(store, tmp_path: Path):
    await store.put_policy(BudgetPolicy(policy_id="from-api", cost_limit=1))
    await store.put_policy(BudgetPolicy(policy_id="applied", cost_limit=1, source="apply:x"))
    report = await reconcile(store, load_paths([write(tmp_path / "p", "x.toml", "")]))
    assert report.removed == []
    assert {p.policy_id for p in await store.list_policies()} == {"from-api", "applied"}


async def test_budgets_in_files_are_created_and_updated(store, tmp_path: Path):
    dir_ = tmp_path / "policies"
    write(dir_, "b.toml", '[budget.team]\nname = "Team"\n')
    await reconcile(store, load_paths([dir_]))
    assert (await store.get_budget("team")).name == "Team"
    write(dir_, "b.toml", '[budget.team]\nname = "Team A"\n')
    await reconcile(store, load_paths([dir_]))
    assert [b.name for b in await store.list_budgets()] == ["Team A"]


async def test_startup_loads_the_configured_directory(store, tmp_path: Path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # no ./policies here
    configured = write(tmp_path / "conf", "x.toml", '[policy.x]\nperiod = "daily"\n'
                                                    'cost_limit = 3\n').parent
    report = await load_at_startup(store, configured)
    assert report.created == ["x"]
    write(tmp_path / "policies", "y.toml", '[policy.y]\nperiod = "hourly"\ncost_limit = 1\n')
    report = await load_at_startup(store, configured)
    assert report.created == ["y"] and report.unchanged == ["x"]
