"""Pydantic's validation errors as the one-line messages people read: ``<where>: <what>``.

Used for the settings and for the destinations file, so both name what to change the same way.
"""

from __future__ import annotations

from collections.abc import Callable

from pydantic import ValidationError
from pydantic_core import ErrorDetails


def error_lines(
    exc: ValidationError,
    name: Callable[[ErrorDetails], str],
    message: Callable[[ErrorDetails], str] = lambda err: err["msg"],
) -> list[str]:
    """One line per error of ``exc``: ``<name>: <message>``, each read from the error (by
    default pydantic's own message): what a person must change, and where."""
    return [f"{name(err)}: {message(err)}" for err in exc.errors()]
