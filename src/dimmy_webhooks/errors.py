"""Every error the service raises on purpose, one class per decision the caller makes.

::

    DimmyWebhooksError
    ├── ConfigError               refuse to start: a setting is missing or unusable
    ├── VerificationError         reject the request (401): signature, timestamp or headers
    ├── StoreError                the database did not do what was asked
    │   ├── StoreUnavailable      retry later (the receiver answers 503)
    │   ├── SchemaBehind          refuse to start: run ``dimmy-webhooks migrate``
    │   └── LeaseLost             another worker owns this work now; drop the result
    ├── UpstreamError             the Dimmy API call did not give an item
    │   ├── TransientUpstream     retry with backoff (transport error, timeout, 429, 5xx)
    │   ├── PermanentUpstream     give up on this id (404, 422, unexpected body)
    │   └── UpstreamAuthError     stop fetching: the API key is wrong (401/403)
    └── OutputError               an output could not take an item; retry that delivery

HTTP status mapping for webhooks lives in :mod:`dimmy_webhooks.intake.receiver`, nowhere else; the
JSON API maps :class:`StoreError` to 503 in :mod:`dimmy_webhooks.web`.
"""

from __future__ import annotations


class DimmyWebhooksError(Exception):
    """Root of every error raised on purpose by this package."""


class ConfigError(DimmyWebhooksError):
    """A setting is missing or unusable; the message says what to change."""


class VerificationError(DimmyWebhooksError):
    """A webhook failed signature, timestamp or header checks.

    ``reason`` is short, safe to log and to send back to the sender (it never
    contains a secret or the expected signature).
    """

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


class StoreError(DimmyWebhooksError):
    """The store failed to do what was asked."""


class StoreUnavailable(StoreError):
    """The database could not commit (locked, disk full, server down). Retry later."""


class SchemaBehind(StoreError):
    """The database schema is older than this version of the code."""


class LeaseLost(StoreError):
    """The work item's lease was taken over; the caller must discard its result."""


class UpstreamError(DimmyWebhooksError):
    """A call to the Dimmy API failed."""

    def __init__(self, reason: str, *, status: int | None = None) -> None:
        super().__init__(reason)
        self.reason = reason
        self.status = status


class TransientUpstream(UpstreamError):
    """Worth retrying later; ``retry_after`` (seconds) is the server's wish, if it said one."""

    def __init__(
        self, reason: str, *, status: int | None = None, retry_after: float | None = None
    ) -> None:
        super().__init__(reason, status=status)
        self.retry_after = retry_after


class PermanentUpstream(UpstreamError):
    """Retrying will not help (unknown id, invalid request, unreadable answer)."""


class UpstreamAuthError(UpstreamError):
    """The API key was refused (fix ``DIMMY_API_KEY``): fetching pauses, no attempts burnt."""


class OutputError(DimmyWebhooksError):
    """An output failed to take an item; the delivery is retried on its own."""
