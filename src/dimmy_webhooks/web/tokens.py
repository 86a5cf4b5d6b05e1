"""Admin and operator tokens: comparing them, and slowing down a client that guesses.

:class:`TokenCheck` compares a bearer token with the admin token (or the tokens a route
accepts) in constant time, and with the accounts' operator tokens by digest
(:meth:`~dimmy_webhooks.config.accounts.Accounts.by_operator_token`);
:class:`FailureThrottle` counts the wrong ones per client. The rules that use them are in
:mod:`.auth`.
"""

from __future__ import annotations

import collections
import hmac
import math
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from dimmy_webhooks.config.accounts import Accounts
from dimmy_webhooks.ratelimit import SlidingWindow
from dimmy_webhooks.web.principal import Viewer

__all__ = ["FailureThrottle", "TokenCheck", "Verdict", "retry_after_header"]


class FailureThrottle:
    """Wrong-token attempts per client: more than ``limit`` within ``window`` seconds locks the
    client out until ``window`` seconds after its first counted failure. Remembers at most
    ``max_clients`` clients (the oldest are forgotten first), so it cannot grow without bound."""

    def __init__(
        self,
        *,
        limit: int = 10,
        window: float = 60.0,
        max_clients: int = 10_000,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.limit = limit
        self.window = window
        self.max_clients = max_clients
        self._clock = clock
        self._failures: collections.OrderedDict[str, SlidingWindow] = collections.OrderedDict()

    def retry_after(self, client: str) -> float | None:
        """Seconds ``client`` must wait before it is heard again, or ``None``."""
        failures = self._failures.get(client)
        wait = failures.wait() if failures is not None else 0.0
        return wait if wait > 0 else None

    def failed(self, client: str) -> None:
        failures = self._failures.get(client)
        if failures is None:
            failures = SlidingWindow(self.limit, self.window, clock=self._clock)
            self._failures[client] = failures
        failures.add()
        self._failures.move_to_end(client)
        while len(self._failures) > self.max_clients:
            self._failures.popitem(last=False)


def retry_after_header(seconds: float) -> str:
    return str(max(1, math.ceil(seconds)))


@dataclass(frozen=True, slots=True)
class Verdict:
    """What a token check decided: ``ok`` (``account``: an operator token's account, seeing
    only it; ``None``: the admin's view); else refused, ``retry_after`` seconds when the
    client is throttled (answer 429), ``None`` when the token is wrong (answer 401)."""

    ok: bool
    retry_after: float | None = None
    account: str | None = None

    @property
    def viewer(self) -> Viewer:
        return Viewer(self.account)


class TokenCheck:
    """The admin token (``None``: not required) and the throttle of wrong attempts."""

    def __init__(self, token: str | None, throttle: FailureThrottle | None = None) -> None:
        self._token = token.encode() if token is not None else None
        self.throttle = throttle or FailureThrottle()

    @property
    def required(self) -> bool:
        return self._token is not None

    def check(
        self,
        given: str,
        client: str,
        *,
        accepted: Sequence[str] | None = None,
        operators: Accounts | None = None,
    ) -> Verdict:
        """Whether ``given`` (from ``client``) is the token (or one of ``accepted``, when
        given: none accepted means none required), or the operator token of one of
        ``operators`` (the verdict names its account). The right token is accepted even from
        a throttled client; a wrong one from it is answered with the wait, uncounted."""
        tokens = [self._token] if accepted is None else [t.encode() for t in accepted]
        operator = operators.by_operator_token(given) if operators and given.strip() else None
        account = operator.name if operator is not None else None
        if not any(tokens):
            return Verdict(ok=True, account=account)
        # the right token is always heard: clients behind a proxy that does not forward
        # addresses share one, and wrong guesses there must not lock the operator out (S24);
        # a guess's odds come from the token's strength, the throttle only slows the guessing
        if any(token and hmac.compare_digest(given.encode(), token) for token in tokens):
            return Verdict(ok=True)
        if account is not None:
            return Verdict(ok=True, account=account)
        wait = self.throttle.retry_after(client)
        if wait is not None:
            return Verdict(ok=False, retry_after=wait)
        self.throttle.failed(client)
        return Verdict(ok=False)
