"""Who is asking, and which accounts' rows they may see: the web layer's rule of accounts.

Every request to the JSON API, the dashboard and ``/metrics`` is resolved (by :mod:`.auth`) to a
:class:`Viewer`:

- the **admin** (``DIMMY_ADMIN_TOKEN``, its dashboard session, or anyone when no admin token is
  set: loopback development) sees every account, the ones removed from the accounts file
  included (their rows are kept, and the admin must be able to find them);
- an account's **operator** (its ``operator_token``, or a dashboard session it opened) sees that
  account only.

The rule has two parts, and every route applies both:

- a list, a count or an export takes ``?account=``: :meth:`Viewer.filter` turns it into the
  account the store is asked for (``None``: every account; the admin's choice, anything
  well-formed, or the operator's own). An operator naming any other account, configured or
  not, is answered 404 ``account not found``, so the answer tells nothing about which accounts
  exist;
- anything asked for by id (an item, an event, a delivery, a quarantine entry) that belongs to an
  account the viewer may not see is answered exactly as if it did not exist: the same status
  and the same body (:meth:`Viewer.owns`).

May import: nothing of the web layer (the rule is pure, so it is tested on its own).
"""

from __future__ import annotations

from dataclasses import dataclass

__all__ = ["ADMIN", "AccountHidden", "Viewer"]


class AccountHidden(LookupError):
    """An account a viewer named that it may not see (or that no viewer could): answered 404."""


@dataclass(frozen=True, slots=True)
class Viewer:
    """Who a request comes from: ``account`` ``None`` is the admin (every account), else the
    operator of that account."""

    account: str | None = None

    @property
    def admin(self) -> bool:
        return self.account is None

    def owns(self, account: str) -> bool:
        """Whether a row of ``account`` may be shown to this viewer."""
        return self.account is None or self.account == account

    def filter(self, requested: str | None) -> str | None:
        """The account a list asked with ``?account=requested`` reads (``None``: all).

        The admin gets what it asked for; an operator its own account, whether it named it or
        nothing. Raises :class:`AccountHidden` when an operator names another account.
        """
        if self.account is None:
            return requested or None
        if requested and requested != self.account:
            raise AccountHidden(requested)
        return self.account

    def visible(self, names: tuple[str, ...]) -> tuple[str, ...]:
        """Of the account ``names``, those this viewer may choose between (the switcher's)."""
        return names if self.account is None else (self.account,)


ADMIN = Viewer()
"""The admin's view: every account."""
