"""Channel fallback chains as data: the shape a chain must have, per event or per category.

A chain (``[{"channel", "after_s", "unless"}, ...]``) is carried by an event
(``fallback``) or by the user's preferences (``fallback: {category | "*": chain}``);
both are checked here, where the records are, and run by ``notifyd.stream.fallback``.
"""

from __future__ import annotations

from typing import Any

from notifyd.config import CHANNELS
from notifyd.model.fields import CATEGORY_RE

CONDITIONS = ("read", "delivered")
MAX_STEPS = len(CHANNELS)
MAX_AFTER_S = 30 * 24 * 3600


class InvalidChain(ValueError):
    """A fallback chain that cannot be used; the message says why."""


def parse_chain(value: Any, where: str = "fallback") -> list[dict[str, Any]]:
    """Normalise a chain or raise :class:`InvalidChain`."""
    if not isinstance(value, list) or not value:
        raise InvalidChain(f"{where} must be a non-empty list of steps")
    if len(value) > MAX_STEPS:
        raise InvalidChain(f"{where} has at most {MAX_STEPS} steps")
    steps: list[dict[str, Any]] = []
    last_after = 0.0
    for i, raw in enumerate(value):
        at = f"{where}[{i}]"
        if not isinstance(raw, dict):
            raise InvalidChain(f"{at} must be an object")
        unknown = set(raw) - {"channel", "after_s", "unless"}
        if unknown:
            raise InvalidChain(f"{at}: unknown field(s) {', '.join(sorted(unknown))}")
        ch = raw.get("channel")
        if ch not in CHANNELS:
            raise InvalidChain(f"{at}.channel must be one of {', '.join(CHANNELS)}")
        if any(s["channel"] == ch for s in steps):
            raise InvalidChain(f"{at}: channel {ch} is already a step")
        after = raw.get("after_s", 0)
        if isinstance(after, bool) or not isinstance(after, int | float):
            raise InvalidChain(f"{at}.after_s must be a number of seconds")
        if not 0 <= after <= MAX_AFTER_S:
            raise InvalidChain(f"{at}.after_s must be between 0 and {MAX_AFTER_S}")
        if i == 0 and after:
            raise InvalidChain(f"{at}: the first step is sent at once (no after_s)")
        if after < last_after:
            raise InvalidChain(f"{at}.after_s must not be earlier than the step before")
        unless = raw.get("unless")
        if unless is not None and (i == 0 or unless not in CONDITIONS):
            raise InvalidChain(
                f"{at}.unless must be one of {', '.join(CONDITIONS)} (not on the first step)"
            )
        step: dict[str, Any] = {"channel": ch, "after_s": after}
        if unless is not None:
            step["unless"] = unless
        steps.append(step)
        last_after = after
    return steps


def parse_preferences_chains(value: Any) -> dict[str, list[dict[str, Any]]] | None:
    """The ``fallback`` field of preferences: ``{category | "*": chain}`` or null."""
    if value is None:
        return None
    if not isinstance(value, dict):
        raise InvalidChain("fallback must be an object of category -> chain")
    out: dict[str, list[dict[str, Any]]] = {}
    for cat, chain in value.items():
        if not isinstance(cat, str) or not (cat == "*" or CATEGORY_RE.match(cat)):
            raise InvalidChain(f"fallback: invalid category {str(cat)[:40]!r}")
        out[cat] = parse_chain(chain, f"fallback.{cat}")
    return out
