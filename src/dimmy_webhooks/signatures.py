"""Svix / Standard Webhooks signatures: decode secrets, sign, verify. Pure, stdlib only.

Contract (the rules of the Svix and Standard Webhooks libraries and specification; where they
differ, the stricter one, since Svix never sends the odd inputs):

* Secrets are ``whsec_<base64>`` strings. :func:`decode_secret` strips surrounding whitespace and
  one ``whsec_`` prefix, restores missing ``=`` padding and decodes strictly (standard alphabet,
  no stray characters). The decoded bytes are the HMAC key. An empty, undecodable or absurdly
  short secret (fewer than :data:`MIN_SECRET_BYTES` decoded bytes) raises
  :class:`~dimmy_webhooks.errors.ConfigError` with a message that never repeats the secret.
  :func:`parse_secrets` reads several secrets separated by spaces and/or commas (rotation).
* Signed content is ``f"{msg_id}.{timestamp}.".encode() + body``, the body bytes exactly as
  received; the signature is ``"v1," + base64(HMAC-SHA256(key, content))``.
* :meth:`Verifier.verify` takes the ``svix-id``/``svix-timestamp``/``svix-signature`` headers when
  all three are present and non-empty, else the ``webhook-*`` set when all three are; it never
  mixes the two families. Header names are matched case-insensitively; when a name occurs twice
  the first value wins (as with Starlette's ``Headers``). Then, in this order:

  1. every used header value is at most ``max_header_bytes`` characters ("header too long");
  2. the message id is 1 to 256 printable ASCII characters ("invalid message id");
  3. the timestamp, stripped of spaces, matches ``[0-9]{1,10}`` ("invalid timestamp") and
     ``floor(clock()) - timestamp`` lies in ``[-tolerance, +tolerance]`` ("timestamp too old" /
     "timestamp too new"); this is checked before any MAC is computed;
  4. the signature header is split on spaces; only the first :data:`MAX_SIGNATURE_TOKENS`
     non-empty tokens are looked at; a token that is not exactly ``<version>,<signature>`` is
     skipped; only the case-sensitive version ``v1`` counts; its base64 text is compared with
     :func:`hmac.compare_digest` against the MAC of every configured key (each key's MAC is
     computed once per call). One match is enough, otherwise "no matching signature".

  ``verify`` raises nothing but :class:`~dimmy_webhooks.errors.VerificationError`, whatever the
  input; its ``reason`` is short and safe to send back to the sender. Parsing the body (JSON) is
  the caller's job, after verification.

* ``verify(headers, body)`` is exactly :meth:`Verifier.check_headers` (rules 1 to 3, which need no
  body) followed by :meth:`Verifier.check_signature` (rule 4): same rules, same order, same
  reasons, and both halves raise only :class:`~dimmy_webhooks.errors.VerificationError`. The
  receiver calls the first as soon as the headers arrive, so a request that can never verify
  (headers missing or malformed, timestamp outside the window) is refused before its body is
  read; only requests that pass it have their body held in memory for the MAC.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import math
import re
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass

from dimmy_webhooks.errors import ConfigError, VerificationError

__all__ = [
    "MAX_MSG_ID_CHARS",
    "MAX_SIGNATURE_TOKENS",
    "MIN_SECRET_BYTES",
    "SignedHeaders",
    "VerifiedMessage",
    "Verifier",
    "decode_secret",
    "parse_secrets",
    "sign",
    "signed_headers",
]

SECRET_PREFIX = "whsec_"  # noqa: S105 (a prefix, not a secret)
#: Floor on the decoded key length. Svix secrets decode to 24 to 32 bytes (the Standard Webhooks
#: reference vector to 18); 16 bytes (128 bits) is the least an HMAC key should carry, and a
#: shorter value is almost surely a truncated copy-paste.
MIN_SECRET_BYTES = 16
#: Message ids become database keys: 1 to this many printable ASCII characters.
MAX_MSG_ID_CHARS = 256
#: Signature tokens examined per request; Svix sends one per active secret (a handful at most).
MAX_SIGNATURE_TOKENS = 32

_SECRET_SETTING = "DIMMY_WEBHOOK_SECRET"  # noqa: S105 (a setting name)
_SECRET_SEPARATORS = re.compile(r"[\s,]+")
_BASE64 = re.compile(r"([A-Za-z0-9+/]+)(={0,2})")
_TIMESTAMP = re.compile(r"[0-9]{1,10}")
_MSG_ID = re.compile(rf"[\x20-\x7e]{{1,{MAX_MSG_ID_CHARS}}}")
_FAMILIES = ("svix", "webhook")
_FAMILY_NAMES = tuple(
    (f"{family}-id", f"{family}-timestamp", f"{family}-signature") for family in _FAMILIES
)
_WANTED = frozenset(name for names in _FAMILY_NAMES for name in names)


def decode_secret(raw: str) -> bytes:
    """Decode one ``whsec_...`` secret into its HMAC key bytes.

    Strips surrounding whitespace and one optional ``whsec_`` prefix, re-pads missing ``=`` and
    base64-decodes strictly. Raises :class:`ConfigError` (without quoting the secret) when the
    secret is empty, not valid base64, or decodes to fewer than :data:`MIN_SECRET_BYTES` bytes.
    """
    if not isinstance(raw, str):
        raise ConfigError(f"{_SECRET_SETTING}: the webhook secret must be text (whsec_...)")
    text = raw.strip()
    if text.startswith(SECRET_PREFIX):
        text = text[len(SECRET_PREFIX) :]
    if not text:
        raise ConfigError(
            f"{_SECRET_SETTING} is empty: copy the endpoint's signing secret (whsec_...) "
            "from the Svix / Dimmy dashboard"
        )
    # binascii tolerates excess or misplaced padding even with validate=True: check the shape
    # first (standard alphabet, then either correct padding or none, which is restored).
    shape = _BASE64.fullmatch(text)
    key = b""
    if shape is not None and (not shape.group(2) or len(text) % 4 == 0):
        padded = shape.group(1) + "=" * (-len(shape.group(1)) % 4)
        try:
            key = base64.b64decode(padded, validate=True)
        except (binascii.Error, ValueError):
            key = b""
    if not key:
        raise ConfigError(
            f"{_SECRET_SETTING} is not a valid signing secret (expected whsec_ followed by "
            "standard base64): copy it again from the Svix / Dimmy dashboard"
        )
    if len(key) < MIN_SECRET_BYTES:
        raise ConfigError(
            f"{_SECRET_SETTING} is too short ({len(key)} bytes decoded, at least "
            f"{MIN_SECRET_BYTES} expected): it looks truncated, copy it again from the "
            "Svix / Dimmy dashboard"
        )
    return key


def parse_secrets(raw: str) -> tuple[bytes, ...]:
    """Decode one or more secrets separated by spaces and/or commas (key rotation).

    Returns the keys in the given order. Raises :class:`ConfigError` when there is none, or
    naming the position (``secret #2``) of the first one :func:`decode_secret` refuses.
    """
    if not isinstance(raw, str):
        raise ConfigError(f"{_SECRET_SETTING}: the webhook secrets must be text (whsec_...)")
    parts = [part for part in _SECRET_SEPARATORS.split(raw) if part]
    if not parts:
        raise ConfigError(
            f"{_SECRET_SETTING} is empty: copy the endpoint's signing secret (whsec_...) "
            "from the Svix / Dimmy dashboard"
        )
    keys: list[bytes] = []
    for position, part in enumerate(parts, start=1):
        try:
            keys.append(decode_secret(part))
        except ConfigError as exc:
            raise ConfigError(f"secret #{position} of {len(parts)}: {exc}") from None
    return tuple(keys)


def _mac(key: bytes, msg_id: str, timestamp: int, body: bytes) -> str:
    digest = hmac.new(key, f"{msg_id}.{timestamp}.".encode(), hashlib.sha256)
    digest.update(body)
    return base64.b64encode(digest.digest()).decode("ascii")


def sign(key: bytes, msg_id: str, timestamp: int, body: bytes) -> str:
    """Return the ``"v1,<base64>"`` signature of ``body`` for this message id and timestamp."""
    return "v1," + _mac(key, msg_id, timestamp, body)


def signed_headers(
    key: bytes,
    msg_id: str,
    body: bytes,
    *,
    timestamp: int | None = None,
    family: str = "svix",
) -> dict[str, str]:
    """Build the three headers Svix would send for ``body`` (for tests and local replays).

    ``family`` is ``"svix"`` (``svix-id``, ...) or ``"webhook"`` (``webhook-id``, ...);
    ``timestamp`` defaults to the current Unix time in whole seconds.
    """
    if family not in _FAMILIES:
        raise ValueError(f"family must be 'svix' or 'webhook', not {family!r}")
    ts = int(time.time()) if timestamp is None else timestamp
    return {
        f"{family}-id": msg_id,
        f"{family}-timestamp": str(ts),
        f"{family}-signature": sign(key, msg_id, ts, body),
    }


@dataclass(frozen=True)
class VerifiedMessage:
    """What a successful verification vouches for."""

    msg_id: str
    timestamp: int


@dataclass(frozen=True, slots=True)
class SignedHeaders:
    """Headers that passed rules 1 to 3: what the signature over the body must then match."""

    msg_id: str
    timestamp: int
    signature_header: str


class Verifier:
    """Checks webhook requests against one or more keys (see the module docstring for rules).

    ``keys`` are decoded HMAC keys (from :func:`parse_secrets`); ``clock`` returns Unix time in
    seconds; ``max_header_bytes`` caps each used header value (in characters, which equal bytes
    for the latin-1 text ASGI servers hand over).
    """

    __slots__ = ("_clock", "_max_header", "_templates", "_tolerance")

    def __init__(
        self,
        keys: Sequence[bytes],
        *,
        tolerance_seconds: int = 300,
        clock: Callable[[], float] = time.time,
        max_header_bytes: int = 8192,
    ) -> None:
        if isinstance(keys, (bytes, bytearray, str)):
            raise TypeError("keys must be a sequence of keys, not a single key")
        if not keys:
            raise ValueError("at least one key is required")
        templates: list[hmac.HMAC] = []
        seen: set[bytes] = set()
        for key in keys:
            if not isinstance(key, (bytes, bytearray)):
                raise TypeError("every key must be bytes")
            if not key:
                raise ValueError("an empty key would accept forged requests")
            if bytes(key) in seen:
                continue
            seen.add(bytes(key))
            templates.append(hmac.new(bytes(key), digestmod=hashlib.sha256))
        if tolerance_seconds < 0:
            raise ValueError("tolerance_seconds must be >= 0")
        if max_header_bytes <= 0:
            raise ValueError("max_header_bytes must be > 0")
        self._templates = tuple(templates)
        self._tolerance = int(tolerance_seconds)
        self._clock = clock
        self._max_header = int(max_header_bytes)

    def verify(self, headers: Mapping[str, str], body: bytes) -> VerifiedMessage:
        """Verify one request; return its id and timestamp or raise :class:`VerificationError`.

        ``headers`` may be a plain mapping with names in any case or a Starlette ``Headers``;
        ``body`` is the raw request body. No other exception escapes, whatever the input.
        """
        return self.check_signature(self.check_headers(headers), body)

    def check_headers(self, headers: Mapping[str, str]) -> SignedHeaders:
        """Rules 1 to 3 (everything but the MAC): call it before reading the body.

        Raises :class:`VerificationError` with the reason :meth:`verify` would give, and
        nothing else whatever the input.
        """
        try:
            msg_id, timestamp_text, signature_header = self._pick_headers(headers)
            if _MSG_ID.fullmatch(msg_id) is None:
                raise VerificationError("invalid message id")
            timestamp = self._check_timestamp(timestamp_text)
            return SignedHeaders(msg_id, timestamp, signature_header)
        except VerificationError:
            raise
        except Exception as exc:  # rule 6: bad input is a 4xx, never a 500
            raise VerificationError("invalid request") from exc

    def check_signature(self, signed: SignedHeaders, body: bytes) -> VerifiedMessage:
        """Rule 4: the MAC of ``body`` against the headers :meth:`check_headers` returned.

        Raises :class:`VerificationError` ("no matching signature", or "invalid request" for a
        body that is not bytes), and nothing else.
        """
        try:
            matched = self._signature_matches(
                signed.signature_header, signed.msg_id, signed.timestamp, body
            )
        except Exception as exc:  # rule 6: bad input is a 4xx, never a 500
            raise VerificationError("invalid request") from exc
        if matched:
            return VerifiedMessage(msg_id=signed.msg_id, timestamp=signed.timestamp)
        raise VerificationError("no matching signature")

    def _pick_headers(self, headers: Mapping[str, str]) -> tuple[str, str, str]:
        """Return (id, timestamp, signature) from one complete family, never mixing them."""
        found: dict[str, str] = {}
        for name, value in headers.items():
            lowered = name.lower()
            if lowered in _WANTED and lowered not in found:
                found[lowered] = value
        for id_name, timestamp_name, signature_name in _FAMILY_NAMES:
            values = (found.get(id_name), found.get(timestamp_name), found.get(signature_name))
            if all(values):
                break
        else:
            raise VerificationError("missing headers")
        msg_id, timestamp_text, signature_header = values
        if not (
            isinstance(msg_id, str)
            and isinstance(timestamp_text, str)
            and isinstance(signature_header, str)
        ):
            raise VerificationError("invalid headers")
        limit = self._max_header
        if len(signature_header) > limit or len(timestamp_text) > limit or len(msg_id) > limit:
            raise VerificationError("header too long")
        return msg_id, timestamp_text, signature_header

    def _check_timestamp(self, text: str) -> int:
        """Parse the timestamp and check it against the clock (before any MAC is computed)."""
        text = text.strip(" ")
        if _TIMESTAMP.fullmatch(text) is None:
            raise VerificationError("invalid timestamp")
        timestamp = int(text)
        age = math.floor(self._clock()) - timestamp
        if age > self._tolerance:
            raise VerificationError("timestamp too old")
        if age < -self._tolerance:
            raise VerificationError("timestamp too new")
        return timestamp

    def _signature_matches(
        self, signature_header: str, msg_id: str, timestamp: int, body: bytes
    ) -> bool:
        """True when one well-formed ``v1`` token equals the MAC of any configured key."""
        expected: list[str] | None = None  # computed at the first v1 token, once per key
        examined = 0
        for token in signature_header.split(" "):
            if not token:
                continue
            examined += 1
            if examined > MAX_SIGNATURE_TOKENS:
                return False
            version, _, candidate = token.partition(",")
            if version != "v1" or not candidate or "," in candidate or not candidate.isascii():
                continue
            if expected is None:
                expected = self._expected(msg_id, timestamp, body)
            for mac in expected:
                if hmac.compare_digest(mac, candidate):
                    return True
        return False

    def _expected(self, msg_id: str, timestamp: int, body: bytes) -> list[str]:
        prefix = f"{msg_id}.{timestamp}.".encode("ascii")
        macs: list[str] = []
        for template in self._templates:
            digest = template.copy()
            digest.update(prefix)
            digest.update(body)
            macs.append(base64.b64encode(digest.digest()).decode("ascii"))
        return macs
