"""The state store a service's HTTP handlers and consumers share, chosen by URL.

``sqlite:///./.millstream/state.db`` (the default) for one machine,
``postgresql://user:pass@host/db`` for several (``pip install 'millstream[postgres]'``).
"""

from __future__ import annotations

from urllib.parse import urlsplit

from millstream.errors import ConfigError
from millstream.store.base import Store
from millstream.store.transaction import Row, Transaction, current_transaction

__all__ = ["Row", "Store", "Transaction", "current_transaction", "open_store"]


def open_store(url: str) -> Store:
    """The store for ``url``, not yet opened (``await store.open()``)."""
    scheme = urlsplit(url).scheme.lower()
    if scheme == "sqlite":
        from millstream.store.sqlite import SqliteStore

        return SqliteStore(url)
    if scheme in ("postgresql", "postgres"):
        try:
            from millstream.store.postgres import PostgresStore
        except ImportError as exc:
            raise ConfigError(
                f"setting store_url = {url!r} needs asyncpg ({exc}); "
                "pip install 'millstream[postgres]'"
            ) from exc
        return PostgresStore(url)
    raise ConfigError(
        f"setting store_url (MILLSTREAM_STORE_URL) = {url!r} has an unsupported scheme; "
        "expected sqlite:///./.millstream/state.db or postgresql://user:pass@host:5432/db"
    )
