"""The running service's parts, built once by :func:`notifyd.stream.factory.build_stream`.

A :class:`Runtime` holds the settings, the Faust app and what is declared on it
(topics, tables).  Code that is handed a runtime uses it directly; modules that still
name tables, topics or settings at module level (``from notifyd.stream.tables import ledger``)
get a :func:`ref` to the *current* runtime, resolved on each use, so importing them does
no work and a test can build its own runtime with its own settings.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, TypeVar, cast

if TYPE_CHECKING:
    import faust

    from notifyd.config import Settings
    from notifyd.providers.base import Provider
    from notifyd.stream.declare import Tables, Topics

T = TypeVar("T")


@dataclass(frozen=True)
class Timer:
    """Monotonic time and sleep of the rate limits and pauses (a test's is virtual)."""

    time: Callable[[], float] = time.monotonic
    sleep: Callable[[float], Awaitable[None]] = asyncio.sleep


@dataclass(frozen=True)
class Runtime:
    settings: Settings
    app: faust.App
    topics: Topics
    tables: Tables
    #: Builds the provider a channel agent owns (``stream.handlers.deliver.build_provider``).
    build_provider: Callable[[str, Settings], Provider]
    timer: Timer = field(default_factory=Timer)


#: The current runtime, if one was built: at most one element.
_current: list[Runtime] = []


class NotBuilt(RuntimeError):
    """The app was used before :func:`notifyd.service.create_app` built it."""


def current() -> Runtime:
    """The runtime most recently built (see :func:`install`)."""
    if not _current:
        raise NotBuilt(
            "no notifyd app yet: build it with notifyd.service.create_app(settings)"
        )
    return _current[-1]


def install(rt: Runtime) -> None:
    """Make ``rt`` the current runtime (the factory does, once per build)."""
    _current[:] = [rt]


@contextmanager
def scoped() -> Iterator[None]:
    """Whatever is built inside the block is current only inside it (a test's app)."""
    saved = list(_current)
    try:
        yield
    finally:
        _current[:] = saved


class _Ref:
    """Forwards attribute, item, iteration, length and truth to ``get(current())``;
    compares and hashes as itself (``is``: the same ref everywhere).

    What it found is kept with the runtime it was found in and served while that
    runtime is current: a runtime's parts never change (``Runtime`` is frozen), and
    looking them up again on every use cost the hot path ~5 % of a busy worker's CPU
    (``settings.x`` alone is read a dozen times per event)."""

    __slots__ = ("_get", "_obj", "_rt")

    def __init__(self, get: Callable[[Runtime], Any]) -> None:
        object.__setattr__(self, "_get", get)
        object.__setattr__(self, "_rt", None)
        object.__setattr__(self, "_obj", None)

    def _target(self) -> Any:
        cur = _current
        if cur and cur[-1] is self._rt:
            return self._obj
        rt = current()
        obj = self._get(rt)
        object.__setattr__(self, "_rt", rt)
        object.__setattr__(self, "_obj", obj)
        return obj

    def __getattr__(self, name: str) -> Any:
        cur = _current
        if cur and cur[-1] is self._rt:
            return getattr(self._obj, name)
        return getattr(self._target(), name)

    def __setattr__(self, name: str, value: Any) -> None:
        setattr(self._target(), name, value)

    def __delattr__(self, name: str) -> None:
        delattr(self._target(), name)

    def __getitem__(self, key: Any) -> Any:
        return self._target()[key]

    def __setitem__(self, key: Any, value: Any) -> None:
        self._target()[key] = value

    def __delitem__(self, key: Any) -> None:
        del self._target()[key]

    def __contains__(self, key: Any) -> bool:
        return key in self._target()

    def __iter__(self) -> Iterator[Any]:
        return iter(self._target())

    def __len__(self) -> int:
        return len(self._target())

    def __bool__(self) -> bool:
        return bool(self._target())  # not len(): settings and topics have none

    def __repr__(self) -> str:
        try:
            return f"ref({self._target()!r})"
        except NotBuilt:
            return "ref(<not built>)"


def ref(get: Callable[[Runtime], T]) -> T:
    """A stand-in for ``get(current())``, looked up again whenever another runtime is
    current (see :class:`_Ref`)."""
    return cast(T, _Ref(get))
