"""``notifyd sandbox`` (also ``python -m notifyd.tools.sandbox``): the sandbox as one process."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import signal
from pathlib import Path

import click

from notifyd.tools.sandbox.provider import SandboxServer
from notifyd.tools.sandbox.smtp import SmtpSink


@click.command("sandbox")
@click.option("--host", default="127.0.0.1", show_default=True)
@click.option("--port", type=int, default=8025, show_default=True,
              help="HTTP API port (0: any free port)")
@click.option("--smtp-port", type=int, default=2525, show_default=True,
              help="SMTP sink port (0: any, -1: no SMTP)")
@click.option("--fail-rate", type=float, default=0.0, help="share of requests answered 503")
@click.option("--lost-ack-rate", type=float, default=0.0,
              help="share delivered but answered 503")
@click.option("--latency-ms", type=float, default=0.0)
@click.option("--jitter-ms", type=float, default=0.0)
@click.option("--seed", type=int, default=None)
@click.option("--webhook-secret", default=None, help="verify webhook signatures")
@click.option("--api-token", default=None, help="require this bearer token for sms/push")
@click.option("--ledger", type=click.Path(path_type=Path), default=None,
              help="append every request here")
@click.option("--maildir", type=click.Path(path_type=Path), default=None,
              help="store received mail here")
def sandbox(host: str, port: int, smtp_port: int, fail_rate: float, lost_ack_rate: float,
            latency_ms: float, jitter_ms: float, seed: int | None, webhook_secret: str | None,
            api_token: str | None, ledger: Path | None, maildir: Path | None) -> None:
    """Run the sandbox delivery providers: SMS/push/webhook HTTP API and an SMTP sink."""
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s")
    server = SandboxServer(
        host,
        port,
        fail_rate=fail_rate,
        lost_ack_rate=lost_ack_rate,
        latency_ms=latency_ms,
        jitter_ms=jitter_ms,
        seed=seed,
        webhook_secret=webhook_secret.encode() if webhook_secret else None,
        api_token=api_token,
        ledger_path=ledger,
    )
    sink = SmtpSink(host, smtp_port, maildir) if smtp_port >= 0 else None
    with contextlib.suppress(KeyboardInterrupt):
        asyncio.run(_serve(server, sink))


async def _serve(server: SandboxServer, sink: SmtpSink | None) -> None:
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
