"""`policies list|validate|apply|replay|delete`: policies and TOML policy files."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import click

from budget_proxy.cli.common import EXIT_USAGE, AliasGroup, CliError, json_option
from budget_proxy.cli.output import emit, money

POLICY_COLUMNS = ["policy_id", "name", "budget_id", "type", "period", "cost_limit",
                  "token_limit", "scope", "enabled", "source"]
HELP_DRY_RUN = "Validate and show what would be sent; change nothing."


@click.group(cls=AliasGroup)
def policies() -> None:
    """Policies: list, apply TOML files, validate, delete."""


@policies.command("list")
@json_option
@click.pass_obj
def policies_list(obj: dict[str, Any]) -> None:
    """Every policy."""
    from budget_proxy.api.policies import scope_text
    from budget_proxy.models import BudgetPolicy

    data = obj["api"].request("GET", "/api/policies")
    if obj["json"]:
        emit(data, True)
        return
    rows = [{**p, "scope": scope_text(BudgetPolicy.model_validate(p))} for p in data]
    emit(rows, False, POLICY_COLUMNS)


def _load_policy_paths(paths: tuple[Path, ...]) -> Any:
    from budget_proxy.policy_files import APPLY_PREFIX, PolicyFileError, load_paths

    try:
        return load_paths(list(paths), source_prefix=APPLY_PREFIX)
    except PolicyFileError as exc:
        raise CliError(str(exc), EXIT_USAGE) from exc


@policies.command("validate")
@click.argument("paths", nargs=-1, required=True, type=click.Path(path_type=Path))
def policies_validate(paths: tuple[Path, ...]) -> None:
    """Check policy files (or directories of them) without a proxy."""
    loaded = _load_policy_paths(paths)
    click.echo(f"ok: {len(loaded.policies)} policies, {len(loaded.budgets)} budgets in "
               f"{len(loaded.files)} files")


@policies.command("apply")
@click.argument("paths", nargs=-1, required=True, type=click.Path(path_type=Path))
@click.option("--dry-run", is_flag=True, help=HELP_DRY_RUN)
@json_option
@click.pass_obj
def policies_apply(obj: dict[str, Any], paths: tuple[Path, ...], dry_run: bool) -> None:
    """Create or update the policies (and budgets) of TOML files on the running proxy, by
    their ids: applying twice changes nothing."""
    from budget_proxy.policy_files import dump_policy

    loaded = _load_policy_paths(paths)
    budgets_out = [b.model_dump(mode="json", exclude={"creation_time", "updated_at"})
                   for b in loaded.budgets]
    policies_out = [dump_policy(p) for p in loaded.policies]
    if not dry_run:
        for body in budgets_out:
            obj["api"].request("PUT", f"/api/budgets/{body['budget_id']}", json=body)
        for body in policies_out:
            obj["api"].request("POST", "/api/policies", json=body)
    if obj["json"]:
        emit({"dry_run": dry_run, "budgets": budgets_out, "policies": policies_out}, True)
        return
    verb = "would apply" if dry_run else "applied"
    click.echo(f"{verb} {len(policies_out)} policies and {len(budgets_out)} budgets from "
               f"{len(loaded.files)} files")
    for body in policies_out:
        click.echo(f"  {body['policy_id']}")


@policies.command("replay")
@click.argument("path", type=click.Path(exists=True, dir_okay=False, path_type=Path))
@click.option("--days", type=click.IntRange(1, 3660), default=7, show_default=True,
              help="Replay the recorded calls of this many days.")
@json_option
@click.pass_obj
def policies_replay(obj: dict[str, Any], path: Path, days: int) -> None:
    """What-if: replay the policy in PATH (TOML policy file with one policy, or JSON) over
    the recorded calls of the last DAYS days; nothing is changed."""
    policy = _one_policy(path)
    data = obj["api"].request("POST", "/api/policies/replay",
                              json={"policy": policy, "days": days})
    if obj["json"]:
        emit(data, True)
        return
    click.echo(f"{data['type']} {data['period']} policy over {data['calls']} matching calls "
               f"of the last {days} days: {data['refused']} refused, {data['warned']} warned; "
               f"{money(data['allowed_cost'])} allowed, {money(data['refused_cost'])} refused")
    if data["windows"]:
        emit(data["windows"], False, ["window", "calls", "allowed", "refused", "warned",
                                      "allowed_cost", "refused_cost"])
    if data["truncated"]:
        click.echo("note: more records than the scan limit; the oldest were left out")


def _one_policy(path: Path) -> dict[str, Any]:
    """The one policy of a JSON file or a TOML policy file."""
    from budget_proxy.policy_files import dump_policy

    if path.suffix == ".json":
        try:
            data = json.loads(path.read_text())
        except (ValueError, UnicodeDecodeError) as exc:
            raise CliError(f"{path}: not JSON: {exc}", EXIT_USAGE) from exc
        if not isinstance(data, dict):
            raise CliError(f"{path}: a policy is a JSON object", EXIT_USAGE)
        return data
    loaded = _load_policy_paths((path,))
    if len(loaded.policies) != 1:
        raise CliError(f"{path}: holds {len(loaded.policies)} policies; replay takes one",
                       EXIT_USAGE)
    return dump_policy(loaded.policies[0])


@policies.command("delete")
@click.argument("policy_id")
@json_option
@click.pass_obj
def policies_delete(obj: dict[str, Any], policy_id: str) -> None:
    """Delete a policy."""
    data = obj["api"].request("DELETE", f"/api/policies/{policy_id}")
    emit(data, True) if obj["json"] else click.echo(f"deleted policy {policy_id}")
