"""The data URL a PostgreSQL vault remembers in its keystore, so later opens need none.

A vault created with a PostgreSQL ``data_url`` stores it in ``keys.db`` (meta key
``data_url``) without its password: the keystore is not a place for a database
secret. An open without ``data_url`` uses the remembered one, and the driver (libpq)
takes the password from ``PGPASSWORD`` or ``~/.pgpass`` (docs/operations.md). A data
URL given to an open wins over the remembered one. The stored value is read as
hostile: anything but a password-free ``postgresql`` URL is a :class:`StorageError`.
"""

from __future__ import annotations

from sqlalchemy import exc
from sqlalchemy.engine import URL, make_url

from .errors import StorageError

__all__ = ["DATA_URL_KEY", "data_url_for", "remembered_form"]

#: keystore meta key: the remembered data URL (no password)
DATA_URL_KEY = "data_url"
_MAX_LENGTH = 2000


def _parse(text: str) -> URL | None:
    try:
        return make_url(text)
    except (exc.ArgumentError, ValueError, TypeError):
        return None


def remembered_form(data_url: str) -> str | None:
    """What a vault with this data URL remembers: the URL without its password, or
    None when it is not a PostgreSQL URL (other back ends are not remembered).
    :class:`StorageError`, naming no part of the URL, if it does not parse."""
    url = _parse(data_url)
    if url is None:
        raise StorageError("the data URL is not a valid SQLAlchemy URL")
    if url.get_backend_name() != "postgresql":
        return None
    # URL.set ignores None; a URL is a named tuple
    return url._replace(password=None).render_as_string(hide_password=False)


def data_url_for(location: str | None, remembered: str | None, given: str | None) -> str | None:
    """The data URL to open a vault with: ``given`` if any, else the one it
    remembers when it keeps its data in an external database (``location``), else
    None (its SQLite ``data.db``). Raises :class:`StorageError` when an external
    vault remembers none, or a value that is not a password-free PostgreSQL URL."""
    if given:
        return given
    if location != "external":
        return None
    if remembered is None:
        raise StorageError(
            "this vault keeps its data in an external database and remembers no data URL: "
            "pass data_url (CLI: --data-url or SHREDVAULT_DATA_URL)"
        )
    url = _parse(remembered) if len(remembered) <= _MAX_LENGTH else None
    if url is None or url.get_backend_name() != "postgresql" or url.password is not None:
        raise StorageError(
            "the data URL remembered in keys.db is not a password-free PostgreSQL URL: "
            "the keystore was altered; pass data_url to open the vault"
        )
    return remembered
