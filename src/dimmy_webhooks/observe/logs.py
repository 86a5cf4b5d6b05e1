"""Structured log lines: ``key=value`` text or one JSON object per line.

Call sites pass fields with ``extra={"fields": {...}}``. Never pass a secret, an API key or a
token: the settings keep them in :class:`pydantic.SecretStr`, and the signature and client modules
never put them in messages. Two things are done to every line whatever the call site passed,
since values come from outside (paths, ids, headers, server answers):

- one record is one line: control characters (newlines, carriage returns, escapes) in the
  message and the fields are written escaped, and the lines of a traceback are indented under a
  ``|``, so nothing a client sends can forge a line that looks like ours;
- a credential inside a URL (``scheme://user:password@host``, or a query parameter such as
  ``api_key=``, ``token=``, ``access_token=``, ``key=``, ``secret=``, ``signature=``, ``sig=``,
  ``password=``, ``auth=``) is written as ``***`` (:func:`redact_urls`, the one function every
  place that shows a URL uses: ``config``, ``/metrics``, the ledger, the dashboard, alerts and
  ``/readyz``).
"""

from __future__ import annotations

import json
import logging
import re
import sys
import time
from typing import Any

_CONTROL = re.compile("[\x00-\x1f\x7f-\x9f\u2028\u2029]")
_URL_PASSWORD = re.compile(r"(?i)\b([a-z][a-z0-9+.-]*://[^\s/@:]*:)[^\s/]*@")
_PASSWORD_PARAM = re.compile(r"(?i)(\spassword=)[^&\s]*")  # a libpq key=value string
# a query parameter whose name says it carries a credential: api_key, apikey, key, token,
# access_token, secret, client_secret, signature, sig, password, passwd, pwd, auth, oauth_*,
# credential(s), session(id), x-amz-signature, ...; its value (up to the next ``&``, ``#``,
# space or quote) is masked
_SECRET_PARAM = re.compile(
    r"(?i)([?&;][^=&;#\s\"'<>]*(?:key|token|secret|sig|pass|pwd|auth|credential|session)"
    r"[^=&;#\s\"'<>]*=)[^&;#\s\"'<>]*"
)


def redact_urls(text: str) -> str:
    """``text`` with every credential inside a URL replaced by ``***``: the password of
    ``user:password@`` (the user name is kept) and the value of a query parameter named like a
    credential (``?api_key=``, ``&token=``, ``access_token``, ``key``, ``secret``,
    ``signature``, ``sig``, ``password``, ``auth``... : any name containing ``key``, ``token``,
    ``secret``, ``sig``, ``pass``, ``pwd``, ``auth``, ``credential`` or ``session``)."""
    # each pattern only where its anchor occurs: every log line goes through here, and most
    # (``key=value`` fields) hold no URL and no query string at all
    if "://" in text:
        text = _URL_PASSWORD.sub(r"\1***@", text)
    if "?" in text or "&" in text or ";" in text:
        text = _SECRET_PARAM.sub(r"\1***", text)
    if "password=" in text.lower():
        text = _PASSWORD_PARAM.sub(r"\1***", text)
    return text


def _one_line(text: str) -> str:
    """``text`` with control characters escaped (``\\n``, ``\\u001b``): it stays one line."""
    return json.dumps(text)[1:-1] if _CONTROL.search(text) else text


def _fields(record: logging.LogRecord) -> dict[str, Any]:
    fields = getattr(record, "fields", None)
    return dict(fields) if isinstance(fields, dict) else {}


class KeyValueFormatter(logging.Formatter):
    """``2026-01-05T09:00:05Z INFO webhook accepted msg_id=... items=500``"""

    def format(self, record: logging.LogRecord) -> str:
        stamp = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(record.created))
        parts = [
            stamp,
            record.levelname,
            record.name.removeprefix("dimmy_webhooks."),
            _one_line(record.getMessage()),
        ]
        for key, value in _fields(record).items():
            text = str(value)
            if not text or _CONTROL.search(text) or any(c in text for c in ' "='):
                text = json.dumps(text)
            parts.append(f"{_one_line(str(key))}={text}")
        line = " ".join(parts)
        if record.exc_info:
            trace = self.formatException(record.exc_info).splitlines()
            line += "".join(f"\n  | {_one_line(part)}" for part in trace)
        return redact_urls(line)


class JsonFormatter(logging.Formatter):
    """One JSON object per line: ``time``, ``level``, ``logger``, ``message`` and the fields."""

    def format(self, record: logging.LogRecord) -> str:
        data: dict[str, Any] = {
            "time": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(record.created)),
            "level": record.levelname,
            "logger": record.name,
            "message": record.getMessage(),
        }
        data.update(_fields(record))
        if record.exc_info:
            data["exception"] = self.formatException(record.exc_info)
        return redact_urls(json.dumps(data, default=str))


def configure(log_format: str = "text", level: str = "INFO") -> None:
    """Send our logs (and uvicorn's) to stderr in the chosen format."""
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(JsonFormatter() if log_format == "json" else KeyValueFormatter())
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level)
    for name in ("uvicorn", "uvicorn.error"):
        logger = logging.getLogger(name)
        logger.handlers[:] = []
        logger.propagate = True
    # one line per request is ours to write (with the message id), not uvicorn's
    logging.getLogger("uvicorn.access").disabled = True
    logging.getLogger("httpx").setLevel(logging.WARNING)
