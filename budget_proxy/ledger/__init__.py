"""The usage ledger: where usage records live when they outgrow the counter store.

With `BUDGET_DATABASE_URL=postgresql://...`, every usage record is written once (keyed by
`record_id`) to PostgreSQL with its hourly rollup, and every usage reader (`/api/usage*`,
reports, CSV export, the dashboard, replay) reads the ledger through the store's
`list_usage` (one seam: `UsageLedger`). Redis keeps counters, holds and a bounded hand-off
buffer; the counters are a cache of the ledger (`budget ledger rebuild`).
"""

from budget_proxy.ledger.base import HourlyRow, UsageLedger

__all__ = ["HourlyRow", "UsageLedger"]
