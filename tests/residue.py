"""Searching a vault's keystore files for key bytes that should be gone."""

from __future__ import annotations

from pathlib import Path

__all__ = ["KEYSTORE_FILES", "scan_keystore"]

KEYSTORE_FILES = ("keys.db", "keys.db-wal", "keys.db-shm", "keys.db-journal")


def scan_keystore(directory: Path, needles: dict[str, bytes]) -> dict[str, list[str]]:
    """Which needles occur in which keystore files of ``directory`` (files that exist;
    keys.db must)."""
    hits: dict[str, list[str]] = {}
    present = [directory / n for n in KEYSTORE_FILES if (directory / n).exists()]
    assert present and present[0].name == "keys.db"
    for path in present:
        data = path.read_bytes()
        for name, needle in needles.items():
            if needle in data:
                hits.setdefault(path.name, []).append(name)
    return hits
