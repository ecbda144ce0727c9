"""Phase ``sink`` of ``notifyd bench``: the sink's capacity, measured from outside.

The bench's HTTP sink (:class:`~notifyd.tools.bench.sink.Sink`) receives every
delivery of the HTTP phases, so its own ceiling bounds what they can show; this client
measures that ceiling.  It runs in a process of its own so that it shares neither the
bench's event loop nor (beyond the machine's cores) its CPU::

    python -m notifyd.tools.bench.sinkload --url http://127.0.0.1:PORT --requests 20000 \\
        --concurrency 128 --run RUN

Keep-alive connections (one ``TCPConnector`` of ``--concurrency`` connections) carry
``--concurrency`` POSTs in flight, the requests notifyd makes per event
(:func:`~notifyd.tools.bench.bodies.capacity_request`: webhook, then push body, whose
``data`` the sink counts).  A warm-up of ``--warmup`` requests (a run the sink does not
count) opens the connections first.  Prints one JSON line: ``requests``, ``ok``,
``errors`` (with the first error), ``seconds``, ``requests_per_s`` and the client's
own ``cpu_s`` over the timed part.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
import time
from collections.abc import Iterator
from typing import Any

import orjson

from notifyd.tools.bench.bodies import capacity_request


async def _drive(
    session: Any, url: str, n: int, concurrency: int, run: str
) -> tuple[int, int, str | None]:
    """``n`` requests, ``concurrency`` at a time: (ok, errors, first error)."""
    import aiohttp

    todo: Iterator[int] = iter(range(n))
    ok = errors = 0
    first: str | None = None

    async def one_lane() -> None:
        nonlocal ok, errors, first
        for i in todo:  # shared: each lane takes the next request when it is free
            path, body = capacity_request(run, i)
            try:
                async with session.post(
                    url + path,
                    data=orjson.dumps(body),
                    headers={"Content-Type": "application/json"},
                ) as resp:
                    await resp.read()
                    if resp.status == 200:
                        ok += 1
                        continue
                    err = f"HTTP {resp.status}"
            except (aiohttp.ClientError, OSError, TimeoutError) as exc:
                err = f"{type(exc).__name__}: {exc}"
            errors += 1
            first = first or err

    await asyncio.gather(*(one_lane() for _ in range(concurrency)))
    return ok, errors, first


async def load(url: str, n: int, concurrency: int, run: str, warmup: int) -> dict[str, Any]:
    import aiohttp

    connector = aiohttp.TCPConnector(limit=concurrency, force_close=False)
    timeout = aiohttp.ClientTimeout(total=60)
    async with aiohttp.ClientSession(connector=connector, timeout=timeout) as session:
        await _drive(session, url, warmup, concurrency, f"{run}-warmup")
        cpu0, t0 = time.process_time(), time.perf_counter()
        ok, errors, first = await _drive(session, url, n, concurrency, run)
        secs = time.perf_counter() - t0
        cpu = time.process_time() - cpu0
    return {
        "requests": n,
        "ok": ok,
        "errors": errors,
        "first_error": first,
        "concurrency": concurrency,
        "warmup": warmup,
        "seconds": round(secs, 3),
        "requests_per_s": round(ok / secs, 1) if secs > 0 else None,
        "cpu_s": round(cpu, 3),
    }


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--url", required=True, help="the sink, http://host:port")
    ap.add_argument("--requests", type=int, default=20_000)
    ap.add_argument("--concurrency", type=int, default=128)
    ap.add_argument("--run", required=True, help="run id in data.run (what the sink counts)")
    ap.add_argument("--warmup", type=int, default=500)
    args = ap.parse_args(argv)
    coro = load(args.url, args.requests, args.concurrency, args.run, args.warmup)
    try:
        import uvloop  # the client should cost as little as it can
    except ImportError:
        result = asyncio.run(coro)
    else:
        result = uvloop.run(coro)
    sys.stdout.write(json.dumps(result) + "\n")


if __name__ == "__main__":  # pragma: no cover
    main()
