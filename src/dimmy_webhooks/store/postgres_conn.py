"""PostgreSQL connections: the URL as messages may show it, driver errors as one line, and
the ``LISTEN`` thread that hears of work other processes queued.

``LISTEN/NOTIFY`` is a wake-up hint only: a transaction that made work due sends
``NOTIFY dimmy_jobs`` (delivered on commit), and the listener calls back when one arrives.
"""

from __future__ import annotations

import logging
import threading
import uuid
from collections.abc import Callable
from typing import Any

import psycopg
import psycopg.errors
from psycopg.conninfo import conninfo_to_dict

from dimmy_webhooks.errors import ConfigError

log = logging.getLogger(__name__)

APPLICATION_NAME = "dimmy-webhooks"
CHANNEL = "dimmy_jobs"
"""The ``LISTEN/NOTIFY`` channel announcing due work (per database)."""

_LISTEN_CHECK_SECONDS = 5.0  # how often the idle listener checks that its connection lives


def describe(database_url: str) -> tuple[str, str | None]:
    """``host:port/dbname`` for messages (never the password), and the password to redact."""
    try:
        params = conninfo_to_dict(database_url)
    except psycopg.Error as exc:
        raise ConfigError("DIMMY_DATABASE_URL is not a valid PostgreSQL URL") from exc
    host = params.get("host") or params.get("hostaddr") or "(default host)"
    port = params.get("port") or "5432"
    dbname = params.get("dbname") or params.get("user") or "(default database)"
    password = params.get("password")
    return f"{host}:{port}/{dbname}", None if password in (None, "") else str(password)


def reason(exc: BaseException, password: str | None) -> str:
    """A driver error as one line, ``password`` (when given) replaced by ``***``."""
    text = " ".join(line.strip() for line in str(exc).splitlines() if line.strip())
    text = text or exc.__class__.__name__
    return text.replace(password, "***") if password else text


UNAVAILABLE: tuple[type[Exception], ...] = (
    psycopg.OperationalError,  # connection lost, pool timeout/closed, deadlock, query canceled
    psycopg.InterfaceError,  # the connection is closed
    psycopg.errors.ReadOnlySqlTransaction,  # a standby after a failover
)
RETRYABLE = (psycopg.errors.DeadlockDetected, psycopg.errors.SerializationFailure)


class Listener:
    """A thread holding one ``LISTEN`` connection; reconnects by itself, never raises."""

    def __init__(
        self,
        conninfo: str,
        kwargs: dict[str, Any],
        on_notify: Callable[[], None],
        connect_timeout: float,
    ) -> None:
        self.conninfo = conninfo
        self.kwargs = kwargs
        self.on_notify = on_notify
        self.connect_timeout = connect_timeout
        self.control = f"dimmy_stop_{uuid.uuid4().hex}"  # private channel to wake the thread
        self.ready = threading.Event()
        self.stopping = threading.Event()
        self.thread = threading.Thread(target=self._run, name="dimmy-pg-listener", daemon=True)

    def start(self) -> None:
        self.thread.start()

    def stop(self, poke: Callable[[str], None]) -> None:
        self.stopping.set()
        if self.ready.is_set():
            try:
                poke(self.control)  # ends the listener's wait at once
            except Exception as exc:  # the wait ends by itself within _LISTEN_CHECK_SECONDS
                log.debug("could not wake the listener: %s", exc)
        self.thread.join(timeout=self.connect_timeout + _LISTEN_CHECK_SECONDS + 1)

    def _run(self) -> None:
        delay = 0.1
        connected_before = False
        failing = False
        while not self.stopping.is_set():
            try:
                with psycopg.connect(self.conninfo, autocommit=True, **self.kwargs) as conn:
                    conn.execute(f"LISTEN {CHANNEL}")
                    conn.execute(f"LISTEN {self.control}")
                    self.ready.set()
                    if connected_before or failing:
                        log.info("listening for %s again", CHANNEL)
                        self.on_notify()  # announcements may have been missed meanwhile
                    connected_before, failing, delay = True, False, 0.1
                    self._listen(conn)
            except psycopg.Error as exc:
                self.ready.clear()
                if not self.stopping.is_set():
                    level = logging.DEBUG if failing else logging.WARNING
                    log.log(level, "LISTEN %s failed, reconnecting: %s", CHANNEL, reason(exc, None))
                failing = True
            except Exception:  # never let the thread die: the hint must come back
                self.ready.clear()
                log.exception("LISTEN %s: unexpected error", CHANNEL)
                failing = True
            self.stopping.wait(delay)
            delay = min(delay * 2, 5.0)
        self.ready.clear()

    def _listen(self, conn: psycopg.Connection[Any]) -> None:
        while not self.stopping.is_set():
            for note in conn.notifies(timeout=_LISTEN_CHECK_SECONDS):
                if self.stopping.is_set():
                    return
                if note.channel == CHANNEL:
                    self.on_notify()
            conn.execute("SELECT 1")  # a dead connection fails here and is replaced
