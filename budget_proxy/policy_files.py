"""Policies as code: TOML files loaded at start-up and reconciled with the store.

Where: every `*.toml` directly in `./policies` (relative to the working directory, if it
exists) and in the configured directory (`BUDGET_POLICIES_DIR` / `[proxy] policies_dir`,
which must exist). Sub-directories are not read, so the shipped examples in
`policies/examples/` are never loaded unless copied up or pointed at.

Format: one table per policy, keyed by its stable id, and optionally budgets::

    [budget.research]
    name = "Research team"

    [policy.research-daily]
    budget_id = "research"
    type = "hard_limit"
    period = "daily"
    component = "research"
    cost_limit = 20.0

Keys are the fields of `BudgetPolicy` (and `Budget`) as the API takes them. The id becomes
the store's `policy_id`, so reconciling is by id: a new id is created, a changed policy is
updated in place (its spend counters, keyed by id and window, carry on), an unchanged one is
left alone, and nothing is ever duplicated. A policy loaded from a file that is no longer in
any file is deleted (files are the truth for file policies); policies created through the API
are never touched. Budgets from files are created or updated, never deleted.

Every file is validated whole before anything is written: an error refuses start-up with a
message naming the file and the key (`policies/team.toml: policy.research-daily.cost_limit:
Input should be greater than or equal to 0`).
"""

from __future__ import annotations

import logging
import re
import tomllib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from pydantic import ValidationError

from budget_proxy.models import INPUT, Budget, BudgetPolicy, utcnow
from budget_proxy.store.base import Store

log = logging.getLogger(__name__)

DEFAULT_DIR = Path("policies")
SOURCE_PREFIX = "file:"  # `source` of policies loaded at start-up (removal applies to these)
APPLY_PREFIX = "apply:"  # `source` of policies pushed with `budget policies apply`
ID_PATTERN = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.:-]{0,127}$")
POLICY_FIELDS_NOT_IN_FILES = frozenset({"policy_id", "source", "created_at", "updated_at"})
BUDGET_FIELDS_NOT_IN_FILES = frozenset({"budget_id", "creation_time", "updated_at"})
TABLES = ("policy", "budget")


class PolicyFileError(ValueError):
    """A policy file is invalid; the message names the file and the key."""


@dataclass
class PolicySet:
    policies: list[BudgetPolicy] = field(default_factory=list)
    budgets: list[Budget] = field(default_factory=list)
    files: list[Path] = field(default_factory=list)


@dataclass
class ReconcileReport:
    created: list[str] = field(default_factory=list)
    updated: list[str] = field(default_factory=list)
    unchanged: list[str] = field(default_factory=list)
    removed: list[str] = field(default_factory=list)

    def summary(self) -> str:
        return (f"{len(self.created)} created, {len(self.updated)} updated, "
                f"{len(self.unchanged)} unchanged, {len(self.removed)} removed")


def policy_dirs(configured: Path | None, default: Path | None = DEFAULT_DIR) -> list[Path]:
    """The directories to load: `./policies` if present, and the configured one."""
    dirs: list[Path] = []
    if default is not None and default.is_dir():
        dirs.append(default)
    if configured is not None:
        if not configured.is_dir():
            raise PolicyFileError(f"{configured}: policies directory does not exist")
        if not any(d.resolve() == configured.resolve() for d in dirs):
            dirs.append(configured)
    return dirs


def _error_text(path: Path, prefix: str, exc: ValidationError) -> str:
    parts = []
    for err in exc.errors(include_url=False):
        loc = ".".join(str(p) for p in err["loc"])
        key = f"{prefix}.{loc}" if loc else prefix
        parts.append(f"{path}: {key}: {err['msg']}")
    return "; ".join(parts)


def load_file(path: Path, source: str | None = None) -> PolicySet:
    """Policies and budgets of one file, validated whole."""
    try:
        raw = tomllib.loads(path.read_text(encoding="utf-8"))
    except tomllib.TOMLDecodeError as exc:
        raise PolicyFileError(f"{path}: invalid TOML: {exc}") from exc
    except (OSError, UnicodeDecodeError) as exc:
        raise PolicyFileError(f"{path}: cannot read: {exc}") from exc
    source = source or f"{SOURCE_PREFIX}{path}"
    out = PolicySet(files=[path])
    for key in raw:
        if key not in TABLES:
            raise PolicyFileError(
                f"{path}: {key}: unknown key (expected [policy.ID] or [budget.ID] tables)")
    for kind in TABLES:
        tables = raw.get(kind, {})
        if not isinstance(tables, dict):
            raise PolicyFileError(f"{path}: {kind}: must be tables like [{kind}.ID]")
        for item_id, body in tables.items():
            prefix = f"{kind}.{item_id}"
            if not ID_PATTERN.match(item_id):
                raise PolicyFileError(f"{path}: {prefix}: id must be letters, digits and "
                                      "'_.:-' (at most 128)")
            if not isinstance(body, dict):
                raise PolicyFileError(f"{path}: {prefix}: must be a table")
            forbidden = POLICY_FIELDS_NOT_IN_FILES if kind == "policy" else (
                BUDGET_FIELDS_NOT_IN_FILES)
            for name in body:
                if name in forbidden:
                    raise PolicyFileError(f"{path}: {prefix}.{name}: not allowed in a file "
                                          "(the table key is the id)")
            try:
                if kind == "policy":
                    out.policies.append(BudgetPolicy.model_validate(
                        {**body, "policy_id": item_id, "source": source}, context=INPUT))
                else:
                    out.budgets.append(Budget.model_validate({**body, "budget_id": item_id},
                                                             context=INPUT))
            except ValidationError as exc:
                raise PolicyFileError(_error_text(path, prefix, exc)) from exc
    return out


def load_paths(paths: list[Path], source_prefix: str = SOURCE_PREFIX) -> PolicySet:
    """Every file (or `*.toml` in every directory) given; an id defined twice is an error
    naming both files."""
    files: list[Path] = []
    for path in paths:
        if path.is_dir():
            files.extend(sorted(p for p in path.glob("*.toml") if p.is_file()))
        elif path.is_file():
            files.append(path)
        else:
            raise PolicyFileError(f"{path}: no such file or directory")
    merged = PolicySet()
    policy_origin: dict[str, Path] = {}
    budget_origin: dict[str, Path] = {}
    for file in files:
        loaded = load_file(file, f"{source_prefix}{file}")
        for policy in loaded.policies:
            if policy.policy_id in policy_origin:
                raise PolicyFileError(f"{file}: policy.{policy.policy_id}: already defined in "
                                      f"{policy_origin[policy.policy_id]}")
            policy_origin[policy.policy_id] = file
        for budget in loaded.budgets:
            if budget.budget_id in budget_origin:
                raise PolicyFileError(f"{file}: budget.{budget.budget_id}: already defined in "
                                      f"{budget_origin[budget.budget_id]}")
            budget_origin[budget.budget_id] = file
        merged.policies += loaded.policies
        merged.budgets += loaded.budgets
        merged.files.append(file)
    return merged


_COMPARED_POLICY = set(BudgetPolicy.model_fields) - {"created_at", "updated_at"}
_COMPARED_BUDGET = set(Budget.model_fields) - {"creation_time", "updated_at"}


async def reconcile(store: Store, loaded: PolicySet, *, prune: bool = True) -> ReconcileReport:
    """Bring the store in line with the files (see the module doc); idempotent."""
    report = ReconcileReport()
    for budget in loaded.budgets:
        existing = await store.get_budget(budget.budget_id)
        if existing is None:
            await store.put_budget(budget)
        elif existing.model_dump(include=_COMPARED_BUDGET) != budget.model_dump(
                include=_COMPARED_BUDGET):
            await store.put_budget(budget.model_copy(update={
                "creation_time": existing.creation_time, "updated_at": utcnow()}))
    wanted = {p.policy_id for p in loaded.policies}
    for policy in loaded.policies:
        current = await store.get_policy(policy.policy_id)
        if current is None:
            await store.put_policy(policy)
            report.created.append(policy.policy_id)
        elif current.model_dump(include=_COMPARED_POLICY) != policy.model_dump(
                include=_COMPARED_POLICY):
            await store.put_policy(policy.model_copy(update={
                "created_at": current.created_at, "updated_at": utcnow()}))
            report.updated.append(policy.policy_id)
        else:
            report.unchanged.append(policy.policy_id)
    if prune:
        for policy in await store.list_policies():
            if (policy.source or "").startswith(SOURCE_PREFIX) and policy.policy_id not in wanted:
                await store.delete_policy(policy.policy_id)
                report.removed.append(policy.policy_id)
    return report


async def load_at_startup(store: Store, configured: Path | None) -> ReconcileReport:
    """Load the policy directories and reconcile; raises `PolicyFileError` (start-up fails)."""
    return await apply_at_startup(store, load_paths(policy_dirs(configured)))


async def apply_at_startup(store: Store, loaded: PolicySet) -> ReconcileReport:
    """Reconcile files already loaded (and validated) into the store; the store may be down
    (`StoreError`): start-up then retries this until it is back."""
    report = await reconcile(store, loaded)
    if loaded.files or report.removed:
        log.info("policy files %s: %s", ", ".join(map(str, loaded.files)) or "(none)",
                 report.summary())
    return report


def dump_policy(policy: BudgetPolicy) -> dict[str, Any]:
    """A policy as the API body `budget policies apply` sends."""
    return policy.model_dump(mode="json", exclude={"created_at", "updated_at"},
                             exclude_none=True)
