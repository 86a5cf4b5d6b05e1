"""The rules a setting's value follows that others apply too: host names, http(s) URLs, the
unverified-body budget's floor, whether a database URL can be used on this installation.

Imports nothing of the settings model (:mod:`.settings` uses these to validate).
"""

from __future__ import annotations

#: Requests declaring a body of at most this many bytes may use the last
#: :data:`SMALL_BODY_RESERVE` bytes of the unverified-body budget (every webhook Dimmy sends is
#: far smaller); see ``intake/receiver.py``.
SMALL_BODY_BYTES = 64 * 1024
SMALL_BODY_RESERVE = 1024 * 1024


def least_budget(max_body_bytes: int) -> int:
    """The smallest unverified-body budget that still holds one body of ``max_body_bytes``:
    a request declaring over :data:`SMALL_BODY_BYTES` may not use the last
    :data:`SMALL_BODY_RESERVE`."""
    if max_body_bytes <= SMALL_BODY_BYTES:
        return max_body_bytes
    return max_body_bytes + SMALL_BODY_RESERVE


def postgres_driver_missing(database_url: str) -> str | None:
    """Why ``database_url`` cannot be used on this installation (a PostgreSQL URL without the
    ``postgres`` extra installed), or ``None``."""
    if not database_url.startswith(("postgresql://", "postgres://")):
        return None
    try:
        import psycopg  # noqa: F401 - only whether it imports
        import psycopg_pool  # noqa: F401
    except ImportError:
        return (
            "a PostgreSQL URL needs the PostgreSQL driver, which is not installed: "
            "pip install 'dimmy-webhooks[postgres]'"
        )
    return None


def http_url(url: str) -> str:
    """``url`` itself; ``ValueError`` unless it starts with ``http://`` or ``https://``."""
    if not url.startswith(("http://", "https://")):
        raise ValueError("must start with http:// or https://")
    return url


def host_name(host: str) -> str:
    """The lower-case name part of a host (and port): ``[::1]:5000`` -> ``::1``,
    ``Example.com:80`` -> ``example.com``, ``::1`` -> ``::1``."""
    host = host.strip().lower()
    if host.startswith("["):
        return host[1 : host.find("]")] if "]" in host else host
    return host.rsplit(":", 1)[0] if host.count(":") == 1 else host
