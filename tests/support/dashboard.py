"""The dashboard as a browser uses it: the login form's handshake and the page's CSRF token."""

from __future__ import annotations

import re

import httpx

from .constants import ADMIN_TOKEN


def dashboard_login(client: httpx.Client, token: str = ADMIN_TOKEN) -> str:
    """Log ``client`` in to the dashboard as its login page's script does (the login form's
    double-submit token, then a JSON post); returns the session's CSRF token."""
    client.get("/ui/login")
    nonce = client.cookies.get("dimmy_login", path="/ui/login") or ""
    answer = client.post("/ui/login", json={"token": token}, headers={"x-csrf-token": nonce})
    if answer.status_code != 200:
        raise AssertionError(f"login refused: {answer.status_code} {answer.text}")
    return csrf_of(client.get("/").text)


def csrf_of(page: str) -> str:
    """The CSRF token a dashboard page carries for its script."""
    found = re.search(r'<meta name="csrf-token" content="([^"]*)">', page)
    return found.group(1) if found else ""
