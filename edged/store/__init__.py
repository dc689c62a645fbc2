"""SQLite store: events, raw detections, system events; schema migrations; retention; queries.

Write side: `EventStore` (the sink worker). Read side: `edged.store.queries` (the CLI).
"""

from edged.store.db import StoreError
from edged.store.events import EventStore
from edged.store.queries import count_rows, db_info, parse_since, query_events, query_system_events
from edged.store.schema import LATEST_VERSION

__all__ = [
    "LATEST_VERSION",
    "EventStore",
    "StoreError",
    "count_rows",
    "db_info",
    "parse_since",
    "query_events",
    "query_system_events",
]
