"""Summarise a pyinstrument session of a notifyd worker (``notifyd bench --profile``).

    python -m notifyd.tools.bench.profile docs/bench/latest.pyisession [--top 25]

Prints where the main thread's time went: by component (our code, Faust, mode,
aiokafka, aiohttp, logging, asyncio, idle) by *self* time of the innermost frame,
the top functions by self time, and notifyd's own functions by inclusive time.
"""

from __future__ import annotations

import argparse
from collections import defaultdict
from collections.abc import Iterable, Sequence
from typing import Any

#: (component, substring of the file path or function name); the first match wins.
COMPONENTS: tuple[tuple[str, str], ...] = (
    ("notifyd", "/notifyd/"),
    ("faust", "/faust/"),
    ("mode (Faust's service layer)", "/mode/"),
    ("aiokafka", "/aiokafka/"),
    ("kafka wire (aiokafka C ext)", "aiokafka"),
    ("aiohttp/yarl/multidict", "/aiohttp/"),
    ("aiohttp/yarl/multidict", "/yarl/"),
    ("aiohttp/yarl/multidict", "/multidict/"),
    ("logging (structlog + stdlib)", "/structlog/"),
    ("logging (structlog + stdlib)", "/logging/"),
    ("jinja2/templates", "/jinja2/"),
    ("orjson/json", "orjson"),
    ("orjson/json", "/json/"),
    ("asyncio event loop", "/asyncio/"),
    ("asyncio event loop", "uvloop"),
    ("venusian/croniter/other deps", "site-packages"),
)
IDLE_FUNCS = frozenset({"select", "poll", "epoll", "_run_once [idle]"})


def parse_frame(info: str) -> tuple[str, str, str]:
    """(function, file, line) of a pyinstrument frame identifier."""
    ident = info.split("\x01", 1)[0]
    parts = ident.split("\x00")
    parts += [""] * (3 - len(parts))
    return parts[0], parts[1], parts[2]


def component(function: str, path: str) -> str:
    if function in IDLE_FUNCS or function.endswith((".poll", ".select")):
        return "idle (waiting in epoll/select)"
    if function.startswith("[") and function.endswith("]"):
        return "pyinstrument markers"
    hay = f"{path} {function}"
    for name, needle in COMPONENTS:
        if needle in hay:
            return name
    if path.startswith("<") or not path:
        return "builtins (C)"
    return "python stdlib"


def summarise(records: Iterable[tuple[Sequence[str], float]], top: int = 25) -> dict[str, Any]:
    """Aggregate pyinstrument frame records (stack, seconds)."""
    total = 0.0
    by_component: dict[str, float] = defaultdict(float)
    self_time: dict[tuple[str, str], float] = defaultdict(float)
    inclusive_ours: dict[str, float] = defaultdict(float)
    for stack, t in records:
        if not stack:
            continue
        total += t
        fn, path, line = parse_frame(stack[-1])
        by_component[component(fn, path)] += t
        self_time[(fn, _short(path, line))] += t
        seen: set[str] = set()
        for info in stack:
            f, p, _ = parse_frame(info)
            if "/notifyd/" in p and f not in seen:
                seen.add(f)
                inclusive_ours[f"{f} ({_short(p, '')})"] += t
    busy = total - by_component.get("idle (waiting in epoll/select)", 0.0)

    def pct(x: float, of: float) -> float:
        return round(100.0 * x / of, 1) if of else 0.0

    return {
        "total_s": round(total, 2),
        "busy_s": round(busy, 2),
        "components": [
            {"component": k, "s": round(v, 2), "pct_total": pct(v, total), "pct_busy": pct(v, busy)}
            for k, v in sorted(by_component.items(), key=lambda kv: -kv[1])
        ],
        "top_self": [
            {"function": f, "where": w, "s": round(v, 2), "pct_busy": pct(v, busy)}
            for (f, w), v in sorted(self_time.items(), key=lambda kv: -kv[1])
            if component(f, w) != "idle (waiting in epoll/select)"
        ][:top],
        "notifyd_inclusive": [
            {"function": k, "s": round(v, 2), "pct_busy": pct(v, busy)}
            for k, v in sorted(inclusive_ours.items(), key=lambda kv: -kv[1])
        ][:top],
    }


def _short(path: str, line: str) -> str:
    for marker in ("site-packages/", "/lib/python3", "/notifyd/"):
        if marker in path:
            path = path.split(marker, 1)[1]
            if marker == "/notifyd/":
                path = "notifyd/" + path
            break
    return f"{path}:{line}" if line else path


def load_records(path: str) -> list[tuple[Sequence[str], float]]:
    from pyinstrument.session import Session

    session = Session.load(path)
    return [(rec[0], rec[1]) for rec in session.frame_records]


def render(summary: dict[str, Any]) -> str:
    lines = [
        f"main thread: {summary['total_s']} s sampled, {summary['busy_s']} s busy",
        "",
        "| component (self time) | s | % of busy |",
        "|---|---:|---:|",
    ]
    for c in summary["components"]:
        lines.append(f"| {c['component']} | {c['s']} | {c['pct_busy']} |")
    lines += ["", "| top functions (self time) | where | s | % of busy |", "|---|---|---:|---:|"]
    for f in summary["top_self"]:
        lines.append(f"| `{f['function']}` | {f['where']} | {f['s']} | {f['pct_busy']} |")
    lines += ["", "| notifyd functions (inclusive) | s | % of busy |", "|---|---:|---:|"]
    for f in summary["notifyd_inclusive"]:
        lines.append(f"| `{f['function']}` | {f['s']} | {f['pct_busy']} |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("session")
    ap.add_argument("--top", type=int, default=25)
    args = ap.parse_args(argv)
    print(render(summarise(load_records(args.session), args.top)))


if __name__ == "__main__":  # pragma: no cover
    main()
