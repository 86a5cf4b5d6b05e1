"""Output plug-ins: the kinds of output installed packages register.

A package adds a kind of output by declaring an entry point in the group
``dimmy_webhooks.outputs``; its name is the scheme (the word before the first ``:`` in
``DIMMY_OUTPUTS``) and its object an :class:`~dimmy_webhooks.outputs.registry.OutputKind`::

    [project.entry-points."dimmy_webhooks.outputs"]
    spool = "dimmy_output_spool:KIND"

The built-in kinds are declared the same way in this project's ``pyproject.toml``, and are
also always present whatever the installed metadata says (a checkout run from ``PYTHONPATH``,
an install older than a kind): :func:`discover` starts from them. An entry point is loaded only
when its scheme is used (or listed by ``dimmy-webhooks outputs``), so a broken plug-in stops
nothing that does not name it. A plug-in may not take a built-in scheme; when two packages
claim one scheme, the first by package name keeps it and the other is listed as ignored.
"""

from __future__ import annotations

import functools
import importlib.metadata
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field

from dimmy_webhooks.errors import ConfigError
from dimmy_webhooks.outputs.kind import OutputKind

GROUP = "dimmy_webhooks.outputs"
"""The entry-point group output plug-ins register under."""

PROJECT = "dimmy-webhooks"


@dataclass(eq=False)
class Plugin:
    """One installed kind of output: its ``scheme``, the package it comes from (``source``,
    ``name version``), the object reference (``target``, ``module:attribute``) and, once
    loaded, its :class:`OutputKind`. ``ignored`` says why an entry point was not used (its
    scheme is taken)."""

    scheme: str
    source: str
    target: str
    builtin: bool = False
    ignored: str | None = None
    _load: Callable[[], object] | None = field(default=None, repr=False)
    _kind: OutputKind | None = field(default=None, repr=False)
    _error: str | None = field(default=None, repr=False)

    def load(self) -> OutputKind:
        """The plug-in's :class:`OutputKind`; :class:`ConfigError` naming the package when it
        cannot be imported or is not one."""
        if self._kind is not None:
            return self._kind
        if self._error is None:
            assert self._load is not None
            try:
                loaded = self._load()
            except Exception as exc:  # the plug-in's own import failed: say which one
                self._error = f"cannot load {self.target}: {type(exc).__name__}: {exc}"
            else:
                if isinstance(loaded, OutputKind):
                    self._kind = loaded
                    return loaded
                self._error = f"{self.target} is {type(loaded).__name__}, not an OutputKind"
        raise ConfigError(f"output plug-in {self.scheme!r} ({self.source}): {self._error}")

    @property
    def usage(self) -> str:
        """How ``DIMMY_OUTPUTS`` names it (``scheme:...`` until it is loaded)."""
        if self._kind is None:
            try:
                self.load()
            except ConfigError:
                return f"{self.scheme}:..."
        assert self._kind is not None
        return self._kind.usage

    @property
    def problem(self) -> str | None:
        """Why it cannot be used: not loadable, or ignored; ``None`` when it can."""
        if self.ignored is not None:
            return self.ignored
        try:
            self.load()
        except ConfigError as exc:
            return str(exc)
        return None


def _builtins() -> dict[str, Plugin]:
    from dimmy_webhooks import __version__
    from dimmy_webhooks.outputs.builtin import BUILTIN_KINDS

    return {
        scheme: Plugin(
            scheme=scheme,
            source=f"{PROJECT} {__version__} (built in)",
            target=target,
            builtin=True,
            _kind=kind,
        )
        for scheme, (target, kind) in BUILTIN_KINDS.items()
    }


def _entry_points() -> list[importlib.metadata.EntryPoint]:
    found = importlib.metadata.entry_points(group=GROUP)
    return sorted(found, key=lambda ep: (_dist_name(ep), ep.name))


def _dist_name(entry_point: importlib.metadata.EntryPoint) -> str:
    dist = entry_point.dist
    return dist.name if dist is not None else "?"


@functools.cache
def discover() -> dict[str, Plugin]:
    """Every kind of output, by scheme: the built-in ones, then those of installed packages
    (read once per process; :func:`refresh` reads them again), then the ignored entry points
    under ``scheme (package)``."""
    kinds = _builtins()
    ignored: dict[str, Plugin] = {}
    for entry_point in _entry_points():
        dist = entry_point.dist
        source = f"{dist.name} {dist.version}" if dist is not None else "unknown package"
        scheme = entry_point.name.strip().lower()
        if dist is not None and dist.name.replace("_", "-").lower() == PROJECT:
            continue  # ours: already there as built in
        plugin = Plugin(scheme=scheme, source=source, target=entry_point.value)
        plugin._load = entry_point.load
        if scheme in kinds:
            plugin.ignored = f"ignored: {scheme} is already {kinds[scheme].source}'s"
            ignored[f"{scheme} ({source})"] = plugin
        elif not scheme.replace("-", "").replace("_", "").isalnum():
            plugin.ignored = f"ignored: {scheme!r} is not a usable scheme"
            ignored[f"{scheme} ({source})"] = plugin
        else:
            kinds[scheme] = plugin
    return {**kinds, **ignored}


def refresh() -> None:
    """Forget what :func:`discover` found (a package was installed while running)."""
    discover.cache_clear()


def usable() -> dict[str, Plugin]:
    """The plug-ins ``DIMMY_OUTPUTS`` may name (not ignored), by scheme."""
    return {scheme: p for scheme, p in discover().items() if p.ignored is None}


class InstalledKinds(Mapping[str, OutputKind]):
    """The kinds of output by scheme, as a mapping read at each use (loading a plug-in when
    it is looked up)."""

    def __getitem__(self, scheme: str) -> OutputKind:
        plugin = usable().get(scheme)
        if plugin is None:
            raise KeyError(scheme)
        return plugin.load()

    def __iter__(self) -> Iterator[str]:
        return iter(usable())

    def __len__(self) -> int:
        return len(usable())
