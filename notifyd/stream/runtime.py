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
    """Forwards attribute, item, iteration, length and truth to ``get()``; compares and
    hashes as itself (``is``: the same ref everywhere)."""

    __slots__ = ("_get",)

    def __init__(self, get: Callable[[], Any]) -> None:
        object.__setattr__(self, "_get", get)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._get(), name)

    def __setattr__(self, name: str, value: Any) -> None:
        setattr(self._get(), name, value)

    def __delattr__(self, name: str) -> None:
        delattr(self._get(), name)

    def __getitem__(self, key: Any) -> Any:
        return self._get()[key]

    def __setitem__(self, key: Any, value: Any) -> None:
        self._get()[key] = value

    def __delitem__(self, key: Any) -> None:
        del self._get()[key]

    def __contains__(self, key: Any) -> bool:
        return key in self._get()

    def __iter__(self) -> Iterator[Any]:
        return iter(self._get())

    def __len__(self) -> int:
        return len(self._get())

    def __bool__(self) -> bool:
        return bool(self._get())  # not len(): settings and topics have none

    def __repr__(self) -> str:
        try:
            return f"ref({self._get()!r})"
        except NotBuilt:
            return "ref(<not built>)"


def ref(get: Callable[[Runtime], T]) -> T:
    """A stand-in for ``get(current())`` that looks it up again on every use."""
    return cast(T, _Ref(lambda: get(current())))
