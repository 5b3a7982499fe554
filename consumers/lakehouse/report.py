"""``passpost report`` on the Iceberg table: the analytics report's summary, same queries, same tables.

The columns the summary needs are read through the catalog into Arrow and queried with the analytics
store's own SQL on an in-memory DuckDB, so both reports count alike.
"""

from __future__ import annotations

from datetime import datetime

from passpost.consumers.analytics.store import DuckDBStore, Summary
from passpost.consumers.lakehouse import table as iceberg
from passpost.settings import Settings

# What ``Store.summary`` reads; the reference and the extra map are not read at all.
SUMMARY_COLUMNS = ("received_at", "generated_at", "origin", "status_code", "outcome", "serial_number",
                   "custom_pass_id")
_HOURLY_VIEW = ("CREATE OR REPLACE VIEW pass_postbacks_hourly AS SELECT date_trunc('hour', coalesce(generated_at, "
                "received_at)) AS hour, origin, status_code, outcome, count(*) AS postbacks FROM pass_postbacks "
                "GROUP BY 1, 2, 3, 4")


def read_summary(settings: Settings, now: datetime) -> Summary:
    table = iceberg.load_catalog(settings).load_table(settings.iceberg_table)
    data = table.scan(selected_fields=SUMMARY_COLUMNS).to_arrow()
    store = DuckDBStore(":memory:")
    try:
        # Naive UTC timestamps, as the DuckDB store keeps them (its summary compares with naive hours).
        store.connection.register("incoming", data)
        store.connection.execute("CREATE TABLE pass_postbacks AS SELECT * REPLACE (received_at::TIMESTAMP AS "
                                 "received_at, generated_at::TIMESTAMP AS generated_at) FROM incoming")
        store.connection.execute(_HOURLY_VIEW)
        return store.summary(now)
    finally:
        store.close()


def where(settings: Settings) -> str:
    """The table as the report names it: the catalog's URI is not shown (it may hold a password)."""
    return f"Iceberg table {settings.iceberg_table} (catalog {settings.iceberg_catalog_name})"
