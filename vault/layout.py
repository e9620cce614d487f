"""Where a vault keeps its files on disk (DESIGN §2): the names every layer agrees on."""

from __future__ import annotations

__all__ = ["ADDING_LOCK", "DATA_FILE", "KEYS_FILE", "RESTORE_MARKER"]

#: the keystore (SQLite): header, wrapped keys, subject tags, the rollback anchor
KEYS_FILE = "keys.db"
#: the data store when it is SQLite: customers, ciphertexts, the access log
DATA_FILE = "data.db"
#: present while a restore is unfinished: the vault refuses to serve until it is gone
RESTORE_MARKER = "RESTORE-INCOMPLETE"
#: prefix of the lock file a batch of new customers holds while it is under way
#: (``adding-<16 hex>.lock``; vault/customers.py)
ADDING_LOCK = "adding-"
