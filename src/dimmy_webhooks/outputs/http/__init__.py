"""Hand-off to the warehouse system: signed HTTP forwards (the ``http:URL`` output).

Every forward is a ``POST`` of a JSON envelope (:mod:`.envelope`; docs/forwarding.md has its
schema) signed with the Standard Webhooks scheme under ``DIMMY_FORWARD_SECRET`` (or the
destination's own ``secret``): ``webhook-id`` (the delivery's idempotency key: the same for every
attempt of one item revision to one destination, across retries, replays, restarts and killed
workers; also sent as ``Idempotency-Key``), ``webhook-timestamp`` and ``webhook-signature``.

Destinations are ``http:URL`` entries of ``DIMMY_OUTPUTS`` and the ``[[destination]]`` tables of
``DIMMY_DESTINATIONS_FILE`` (:mod:`.destinations`: TOML, checked at start-up, every mistake named).

What an answer means (:mod:`.output`): a 2xx is delivered (its status, latency, an excerpt and the
record id the WMS returned go into the ledger). A 400, 413, 415 or 422 is the WMS refusing this
item: dead at once with the answer's excerpt (replayable). Anything else, a 3xx included
(redirects are never followed: a forward never goes anywhere but the configured URL), a timeout
or a reset, is retried with backoff, never sooner than a ``Retry-After``. After several failures
in a row the destination is paused for a while (growing, at most 5 minutes: :mod:`.limits`): its
deliveries wait without using up attempts, so a WMS outage of hours loses nothing, and only its
own deliveries wait: every destination has its own connections, concurrency and rate.
"""

from dimmy_webhooks.outputs.base import DeliveryFailed, DestinationPaused
from dimmy_webhooks.outputs.http.destinations import (
    Destination,
    Filter,
    check_url,
    load_destinations,
)
from dimmy_webhooks.outputs.http.envelope import ENVELOPE_SCHEMA_VERSION, EXCERPT_LIMIT
from dimmy_webhooks.outputs.http.output import HttpOutput

__all__ = [
    "ENVELOPE_SCHEMA_VERSION",
    "EXCERPT_LIMIT",
    "DeliveryFailed",
    "Destination",
    "DestinationPaused",
    "Filter",
    "HttpOutput",
    "check_url",
    "load_destinations",
]
