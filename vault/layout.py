"""Where a vault keeps its files on disk (DESIGN §2): the names every layer agrees on."""

from __future__ import annotations

__all__ = ["DATA_FILE", "KEYS_FILE", "RESTORE_MARKER"]

#: the keystore (SQLite): header, wrapped keys, subject tags, the rollback anchor
KEYS_FILE = "keys.db"
#: the data store when it is SQLite: customers, ciphertexts, the access log
DATA_FILE = "data.db"
#: present while a restore is unfinished: the vault refuses to serve until it is gone
RESTORE_MARKER = "RESTORE-INCOMPLETE"
