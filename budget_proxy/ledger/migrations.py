"""Versioned schema of the PostgreSQL ledger: each migration runs once, in order, inside one
transaction under an advisory lock, so replicas starting together migrate exactly once.
Append new versions; never edit an applied one."""

from __future__ import annotations

MIGRATIONS_TABLE = "budget_schema_migrations"
LOCK_ID = 0x6270_6C65_6467  # pg_advisory_xact_lock key of the migrations ("bpledg")

MIGRATIONS: tuple[tuple[int, str, str], ...] = (
    (1, "usage records and hourly rollups", """
CREATE TABLE usage_records (
    record_id text PRIMARY KEY,
    ts timestamptz NOT NULL,
    provider text NOT NULL,
    model text NOT NULL,
    component text NOT NULL,
    context_id text,
    session_id text,
    task_id text,
    task_type text,
    allocation_id text,
    status text NOT NULL,
    input_tokens bigint NOT NULL,
    output_tokens bigint NOT NULL,
    total_tokens bigint NOT NULL,
    input_nusd bigint NOT NULL,
    output_nusd bigint NOT NULL,
    total_nusd bigint NOT NULL,
    body text NOT NULL
);
-- the filters of /api/usage/records, reports and the export, each with time order
CREATE INDEX usage_records_ts ON usage_records (ts, record_id);
CREATE INDEX usage_records_component_ts ON usage_records (component, ts);
CREATE INDEX usage_records_provider_ts ON usage_records (provider, ts);
CREATE INDEX usage_records_model_ts ON usage_records (model, ts);
CREATE INDEX usage_records_context_ts ON usage_records (context_id, ts)
    WHERE context_id IS NOT NULL;
CREATE INDEX usage_records_session_ts ON usage_records (session_id, ts)
    WHERE session_id IS NOT NULL;
-- one row per hour (UTC) and (provider, model, component), kept in the transaction that
-- inserts the records: reports over months read these, not the records
CREATE TABLE usage_hourly (
    hour timestamptz NOT NULL,
    provider text NOT NULL,
    model text NOT NULL,
    component text NOT NULL,
    requests bigint NOT NULL,
    input_tokens bigint NOT NULL,
    output_tokens bigint NOT NULL,
    total_tokens bigint NOT NULL,
    input_nusd bigint NOT NULL,
    output_nusd bigint NOT NULL,
    total_nusd bigint NOT NULL,
    PRIMARY KEY (hour, provider, model, component)
);
"""),
)
