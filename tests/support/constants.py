"""Credentials the tests configure, the CLI as installed, the store backends and run sizes."""

from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest

from dimmy_webhooks.signatures import parse_secrets

SECRET = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw"
KEY = parse_secrets(SECRET)[0]
API_KEY = "test-api-key-123"
ADMIN_TOKEN = "test-admin-token-456"
AUTH = {"Authorization": f"Bearer {ADMIN_TOKEN}"}  # the JSON API's admin credentials
FORWARD_SECRET = "whsec_" + "QUJDREVGR0hJSktMTU5PUFFSU1RVVldYWVo0NTY3ODk="  # of an http output
CLI = str(Path(sys.executable).with_name("dimmy-webhooks"))
ROOT = Path(__file__).resolve().parents[2]  # the repository
T0 = 1_800_000_000.0  # a fixed wall-clock time for stored rows

# the two store backends, as fixture parameters (PostgreSQL ones carry the ``postgres`` mark)
STORE_BACKENDS = ["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)]

FULL = os.environ.get("DIMMY_FAULTS_FULL") == "1"


def scaled(n: int) -> int:
    """``n`` for a normal run, ``10 * n`` for a full run (``DIMMY_FAULTS_FULL=1``)."""
    return n * 10 if FULL else n
