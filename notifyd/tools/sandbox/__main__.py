"""``python -m notifyd.tools.sandbox``: the sandbox HTTP API and SMTP sink as one process."""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import logging
import signal
from collections.abc import Sequence
from pathlib import Path

from notifyd.tools.sandbox.provider import SandboxServer
from notifyd.tools.sandbox.smtp import SmtpSink


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m notifyd.tools.sandbox", description="notifyd sandbox delivery providers"
    )
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int, default=8025, help="HTTP API port (0: any free port)")
    p.add_argument(
        "--smtp-port", type=int, default=2525, help="SMTP sink port (0: any, -1: no SMTP)"
    )
    p.add_argument("--fail-rate", type=float, default=0.0)
    p.add_argument("--lost-ack-rate", type=float, default=0.0)
    p.add_argument("--latency-ms", type=float, default=0.0)
    p.add_argument("--jitter-ms", type=float, default=0.0)
    p.add_argument("--seed", type=int, default=None)
    p.add_argument("--webhook-secret", default=None, help="verify webhook signatures")
    p.add_argument("--api-token", default=None, help="require this bearer token for sms/push")
    p.add_argument("--ledger", type=Path, default=None, help="append every request here")
    p.add_argument("--maildir", type=Path, default=None, help="store received mail here")
    return p


async def _serve(args: argparse.Namespace) -> None:
    server = SandboxServer(
        args.host,
        args.port,
        fail_rate=args.fail_rate,
        lost_ack_rate=args.lost_ack_rate,
        latency_ms=args.latency_ms,
        jitter_ms=args.jitter_ms,
        seed=args.seed,
        webhook_secret=args.webhook_secret.encode() if args.webhook_secret else None,
        api_token=args.api_token,
        ledger_path=args.ledger,
    )
    sink = SmtpSink(args.host, args.smtp_port, args.maildir) if args.smtp_port >= 0 else None
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        with contextlib.suppress(NotImplementedError):  # Windows
            loop.add_signal_handler(sig, stop.set)
    await server.start()
    try:
        print(f"sandbox http  {server.url}  (sms: {server.url}/v1/sms)", flush=True)
        if sink is not None:
            await sink.start()
            print(f"sandbox smtp  {sink.host}:{sink.port}", flush=True)
        await stop.wait()
    finally:
        if sink is not None:
            await sink.stop()
        await server.stop()


def main(argv: Sequence[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s")
    try:
        asyncio.run(_serve(args))
    except KeyboardInterrupt:
        pass
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
