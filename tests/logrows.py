"""The access log read straight from a vault's SQLite ``data.db`` (read-only), as an
outside checker would: no keys and no library code between the rows and the test."""

from __future__ import annotations

import json
import sqlite3
from pathlib import Path
from typing import Any

__all__ = ["entries_after", "scalar"]


def scalar(data_db: Path, sql: str, *params: Any) -> Any:
    """The first column of the first row ``sql`` returns."""
    conn = sqlite3.connect(f"file:{data_db}?mode=ro", uri=True)
    try:
        return conn.execute(sql, params).fetchone()[0]
    finally:
        conn.close()


def entries_after(data_db: Path, seq: int) -> list[dict[str, Any]]:
    """The log entries after ``seq``, in order, parsed from the stored bytes."""
    conn = sqlite3.connect(f"file:{data_db}?mode=ro", uri=True)
    try:
        rows = conn.execute("SELECT body FROM sv_log WHERE seq > ? ORDER BY seq", (seq,)).fetchall()
    finally:
        conn.close()
    return [json.loads(bytes(body)) for (body,) in rows]
