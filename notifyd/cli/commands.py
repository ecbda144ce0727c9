"""``notifyd`` command line.

Settings are environment variables (``NOTIFYD_*``); a flag given here is written to
the environment before the settings are first read, so flags and env mean the same.
"""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
import time
import uuid
from pathlib import Path
from typing import Any

import click

EXIT_USAGE = 2
EXIT_UNAVAILABLE = 69  # EX_UNAVAILABLE: a broker or service could not be reached


def _set_env(**values: Any) -> None:
    for name, value in values.items():
        if value is not None:
            os.environ[f"NOTIFYD_{name.upper()}"] = str(value)


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(package_name="notifyd")
def main() -> None:
    """notifyd: a streaming notification daemon on Kafka."""


# --------------------------------------------------------------------------------------
# worker
# --------------------------------------------------------------------------------------


@main.command()
@click.option("--broker", "broker_url", help="kafka://host:port (NOTIFYD_BROKER_URL)")
@click.option(
    "--web-port", type=click.IntRange(1, 65535), help="Port of the web view (NOTIFYD_WEB_PORT)"
)
@click.option("--web-host", help="Address of the web view (NOTIFYD_WEB_HOST)")
@click.option("--datadir", type=click.Path(path_type=Path), help="Table data (NOTIFYD_DATADIR)")
@click.option("--loglevel", "log_level", help="DEBUG, INFO, WARNING (NOTIFYD_LOG_LEVEL)")
@click.option(
    "--processes",
    type=click.IntRange(1, 256),
    default=1,
    show_default=True,
    help="Worker processes on this machine (one per core): web ports NOTIFYD_WEB_PORT+i, "
    "tables in NOTIFYD_DATADIR/process-i",
)
def worker(
    broker_url: str | None,
    web_port: int | None,
    web_host: str | None,
    datadir: Path | None,
    log_level: str | None,
    processes: int,
) -> None:
    """Run a worker: consume events, keep tables, deliver, serve the web view."""
    _set_env(
        broker_url=broker_url,
        web_port=web_port,
        web_host=web_host,
        datadir=datadir,
        log_level=log_level,
    )
    from notifyd.cli.admin import _settings

    s = _settings()  # a bad NOTIFYD_* variable: one line on stderr, not a traceback
    if processes > 1:
        from notifyd.cli.supervise import ProcessesUnsupported, run_processes

        try:
            sys.exit(run_processes(processes, s))
        except ProcessesUnsupported as exc:
            raise click.UsageError(str(exc)) from None
    from notifyd.service import create_app
    from notifyd.stream.worker import run_worker

    sys.exit(run_worker(lambda s: create_app(s).app))


# --------------------------------------------------------------------------------------
# broker
# --------------------------------------------------------------------------------------


@main.command()
@click.argument("kind", type=click.Choice(["kafka", "tansu"]), default="kafka")
@click.option(
    "--datadir",
    type=click.Path(path_type=Path),
    default=Path("var/broker"),
    show_default=True,
    help="Data directory (Kafka keeps topics here across restarts)",
)
@click.option("--port", type=int, default=0, help="Listener port (0: a free one, or the last one)")
def broker(kind: str, datadir: Path, port: int) -> None:
    """Start a local broker in the foreground: Apache Kafka (KRaft) or Tansu."""
    from notifyd.tools.broker.base import BrokerError
    from notifyd.tools.broker.kafka import KafkaBroker
    from notifyd.tools.broker.tansu import TansuBroker

    b: KafkaBroker | TansuBroker = (
        KafkaBroker(datadir / "kafka", port=port)
        if kind == "kafka"
        else TansuBroker(datadir / "tansu", port=port)
    )
    try:
        if kind == "kafka":
            click.echo("fetching Apache Kafka jars (first run only) ...", err=True)
        b.start()
        asyncio.run(b.wait_ready())
    except BrokerError as exc:
        b.stop()
        raise click.ClickException(str(exc)) from exc
    click.echo(f"{kind} ready: NOTIFYD_BROKER_URL={b.url}  (Ctrl-C stops it)")
    try:
        signal.sigwait({signal.SIGINT, signal.SIGTERM})
    finally:
        b.stop()


# --------------------------------------------------------------------------------------
# send
# --------------------------------------------------------------------------------------


@main.command()
@click.option("--user", "user_id", help="user_id (also the message key)")
@click.option("--title")
@click.option("--body")
@click.option("--category", default="general", show_default=True)
@click.option("--channel", "channels", multiple=True, help="Restrict to channel (repeatable)")
@click.option(
    "--priority",
    type=click.Choice(["low", "normal", "high", "critical"]),
    default="normal",
    show_default=True,
)
@click.option("--template")
@click.option("--data", "data_json", help="Template data as a JSON object")
@click.option("--event-id", help="Idempotency key, per user (default: a new UUID)")
@click.option("--file", "file", type=click.File("rb"), help="Send this JSON file as the event")
@click.option("--broker", "broker_url", help="kafka://host:port (NOTIFYD_BROKER_URL)")
@click.option("--send-at", help="Send at this RFC 3339 time (with offset)")
@click.option("--delay-s", type=float, help="Send this many seconds after acceptance")
def send(
    user_id: str | None,
    title: str | None,
    body: str | None,
    category: str,
    channels: tuple[str, ...],
    priority: str,
    template: str | None,
    data_json: str | None,
    event_id: str | None,
    file: Any,
    broker_url: str | None,
    send_at: str | None = None,
    delay_s: float | None = None,
) -> None:
    """Produce one event onto notifyd.events (as any other service would)."""
    import orjson

    from notifyd.model.records import InvalidEvent, parse_event

    _set_env(broker_url=broker_url)
    if file is not None:
        raw = file.read()
    else:
        if not user_id:
            raise click.UsageError("--user is required (or --file)")
        event: dict[str, Any] = {
            "event_id": event_id or str(uuid.uuid4()),
            "user_id": user_id,
            "category": category,
            "priority": priority,
        }
        for k, v in (("title", title), ("body", body), ("template", template)):
            if v is not None:
                event[k] = v
        if channels:
            event["channels"] = list(channels)
        if send_at is not None:
            event["send_at"] = send_at
        if delay_s is not None:
            event["delay_s"] = delay_s
        if data_json:
            try:
                event["data"] = orjson.loads(data_json)
            except orjson.JSONDecodeError as exc:
                raise click.UsageError(f"--data is not JSON: {exc}") from exc
        raw = orjson.dumps(event)
    try:
        parsed = parse_event(raw)
    except InvalidEvent as exc:
        raise click.ClickException(f"invalid event: {exc.reason}") from exc
    from notifyd.config import get_settings
    from notifyd.stream.producer import produce
    from notifyd.stream.topology import TopicNames

    s = get_settings()
    meta = asyncio.run(produce(s, TopicNames(s.topic_prefix).events, parsed.user_id.encode(), raw))
    click.echo(
        f"sent event_id={parsed.event_id} notification_id={parsed.notification_id} "
        f"partition={meta[0]} offset={meta[1]}"
    )


@main.command()
@click.option("--event-id", required=True, help="The event to cancel (its producer's id)")
@click.option("--user", "user_id", required=True, help="Its recipient (also the message key)")
@click.option("--broker", "broker_url", help="kafka://host:port (NOTIFYD_BROKER_URL)")
def cancel(event_id: str, user_id: str, broker_url: str | None) -> None:
    """Cancel what is still pending of an event (scheduled, deferred, retrying, in an
    open digest): ``{"op": "cancel"}`` on notifyd.events, as a producer would send it.

    Harmless twice; wins even if it arrives before the event itself."""
    import orjson

    from notifyd.model.records import InvalidEvent, parse_input

    _set_env(broker_url=broker_url)
    raw = orjson.dumps({"op": "cancel", "user_id": user_id, "event_id": event_id})
    try:
        req = parse_input(raw)
    except InvalidEvent as exc:
        raise click.ClickException(f"invalid cancel: {exc.reason}") from exc
    from notifyd.config import get_settings
    from notifyd.stream.producer import produce
    from notifyd.stream.topology import TopicNames

    s = get_settings()
    meta = asyncio.run(produce(s, TopicNames(s.topic_prefix).events, user_id.encode(), raw))
    click.echo(
        f"cancel sent for event_id={event_id} notification_id={req.notification_id} "
        f"partition={meta[0]} offset={meta[1]}"
    )


# --------------------------------------------------------------------------------------
# dlq
# --------------------------------------------------------------------------------------


@main.group()
def dlq() -> None:
    """Inspect and re-drive dead letters."""


_DLQ_KIND = click.Choice(["events", "deliveries"])


@dlq.command("list")
@click.option("--topic", "kind", type=_DLQ_KIND, default="events", show_default=True)
@click.option("--limit", type=int, default=50, show_default=True)
@click.option("--broker", "broker_url", help="kafka://host:port (NOTIFYD_BROKER_URL)")
def dlq_list(kind: str, limit: int, broker_url: str | None) -> None:
    """Print the most recent dead letters with their reasons (JSON lines)."""
    import orjson

    from notifyd.config import get_settings
    from notifyd.stream.dlq import recent_dead_letters
    from notifyd.stream.topology import TopicNames

    _set_env(broker_url=broker_url)
    s = get_settings()
    names = TopicNames(s.topic_prefix)
    topic = names.events_dlq if kind == "events" else names.deliveries_dlq
    try:
        items = asyncio.run(recent_dead_letters(s.bootstrap_servers, topic, limit))
    except Exception as exc:
        raise click.ClickException(f"cannot read {topic}: {exc}") from exc
    for item in items:
        click.echo(orjson.dumps(item).decode())
    click.echo(f"{len(items)} most recent dead letters in {topic}", err=True)


@dlq.command("redrive")
@click.option("--topic", "kind", type=_DLQ_KIND, default="deliveries", show_default=True)
@click.option("--notification-id", "nids", multiple=True, help="Only these (repeatable)")
@click.option("--all", "everything", is_flag=True, help="Every dead letter in the topic")
@click.option("--broker", "broker_url", help="kafka://host:port (NOTIFYD_BROKER_URL)")
def dlq_redrive(kind: str, nids: tuple[str, ...], everything: bool, broker_url: str | None) -> None:
    """Send dead letters through the pipeline again, once their cause is fixed."""
    from notifyd.config import get_settings
    from notifyd.stream.redrive import redrive

    if not nids and not everything:
        raise click.UsageError("give --notification-id ... or --all")
    _set_env(broker_url=broker_url)
    wanted = {n.encode() for n in nids}

    def select(rec: Any) -> bool:
        return everything or any(n in (rec.value or b"") for n in wanted)

    try:
        result = asyncio.run(redrive(get_settings(), kind, select))
    except Exception as exc:
        raise click.ClickException(f"re-drive failed: {exc}") from exc
    click.echo(f"re-drove {result.redriven} of {result.scanned} dead letters ({kind})")


# --------------------------------------------------------------------------------------
# config
# --------------------------------------------------------------------------------------


@main.command("config")
def show_config() -> None:
    """Print the effective settings (secrets masked)."""
    import orjson

    from notifyd.config import get_settings

    click.echo(orjson.dumps(get_settings().redacted(), option=orjson.OPT_INDENT_2).decode())


# --------------------------------------------------------------------------------------
# run: the embedded default
# --------------------------------------------------------------------------------------


@main.command()
@click.option(
    "--datadir", type=click.Path(path_type=Path), default=Path("var/run"), show_default=True
)
@click.option("--web-port", type=click.IntRange(1, 65535), default=6066, show_default=True)
@click.option(
    "--demo/--no-demo",
    default=True,
    show_default=True,
    help="Produce a sample notification and show it delivered",
)
@click.option("--exit-after-demo", is_flag=True, help="Stop everything after the demo")
def run(datadir: Path, web_port: int, demo: bool, exit_after_demo: bool) -> None:
    """Run notifyd on the embedded default: Tansu broker, SQLite store, local sinks."""
    from notifyd.tools.embedded import run_embedded

    sys.exit(asyncio.run(run_embedded(datadir, web_port, demo, exit_after_demo)))


def worker_subprocess(env: dict[str, str], log_path: Path) -> subprocess.Popen[bytes]:
    """Start ``notifyd worker`` as a child process (used by ``run`` and the tests)."""
    log_path.parent.mkdir(parents=True, exist_ok=True)
    with open(log_path, "ab") as log:
        return subprocess.Popen(
            [sys.executable, "-m", "notifyd", "worker"],
            env=env,
            stdout=log,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            start_new_session=True,
        )


def _now() -> float:
    return time.time()


# --------------------------------------------------------------------------------------
# bench
# --------------------------------------------------------------------------------------


@main.command()
@click.option(
    "--broker",
    "broker_kind",
    type=click.Choice(["kafka", "tansu"]),
    default="kafka",
    show_default=True,
    help="Broker the bench starts (ignored with --broker-url)",
)
@click.option("--broker-url", help="Use this running broker (kafka://host:port) instead")
@click.option("--events", type=int, help="Events of the throughput runs [20000]")
@click.option("--floor-events", type=int, help="Messages of the floor throughput run [100000]")
@click.option("--users", type=int, help="Users with preferences for the pipeline runs [100000]")
@click.option("--duration", type=float, help="Seconds of each fixed-rate run [15]")
@click.option("--rates", help="Fixed rates in events/s, comma-separated [500,1000,2000]")
@click.option("--state-users", type=int, help="Users in the RocksDB state test [10000000]")
@click.option("--partitions", type=int, help="Partitions of every topic [8]")
@click.option("--skip-state", is_flag=True, help="Skip the RocksDB state/recovery test")
@click.option("--skip-failover", is_flag=True,
              help="State phase without its failover to a standby (two workers, one stopped)")
@click.option("--skip-notifyd", is_flag=True,
              help="Skip the pipeline phase (throughput, latency, idle; ratios need it)")
@click.option("--schedule-entries", type=int,
              help="Pending scheduled sends in the schedule phase [1000000]")
@click.option("--skip-schedule", is_flag=True, help="Skip the pending-schedules phase")
@click.option("--skip-floor", is_flag=True, help="Skip the raw aiokafka floor")
@click.option(
    "--fanout-subscribers", type=int, help="Subscribers of the topic in the fan-out phase [100000]"
)
@click.option("--skip-fanout", is_flag=True, help="Skip the topic fan-out phase")
@click.option(
    "--scaling-processes", type=click.IntRange(1, 64),
    help="Phase scaling: the throughput run on `worker --processes N` [2; 1 skips it]",
)
@click.option("--sink-requests", type=click.IntRange(1),
              help="Phase sink: POSTs of the sink-capacity client [20000]")
@click.option("--sink-concurrency", type=click.IntRange(1, 4096),
              help="Phase sink: requests the client keeps in flight [128]")
@click.option("--skip-sink", is_flag=True, help="Skip the sink-capacity phase")
@click.option("--http-events", type=click.IntRange(1),
              help="Phases http and quix: events, each to webhook + push [20000]")
@click.option("--http-users", type=click.IntRange(1),
              help="Phases http and quix: users with a webhook URL and a push token [1000]")
@click.option("--skip-http", is_flag=True, help="Skip notifyd's webhook+push phase")
@click.option("--skip-quix", is_flag=True, help="Skip the Quix Streams peer phase")
@click.option("--quick", is_flag=True, help="Small sizes: a smoke run of a minute or so")
@click.option(
    "--out",
    type=click.Path(path_type=Path),
    default=Path("docs/bench/latest.json"),
    show_default=True,
    help="Result JSON; the histogram PNG is written next to it",
)
@click.option("--profile", type=click.Choice(["pyinstrument"]), help="Profile the worker")
@click.option("--worker-log-level", default="INFO", show_default=True)
@click.option(
    "--worker-patch",
    "worker_patches",
    multiple=True,
    type=click.Choice(["uvloop", "fetch-wait-10ms", "fetch-batch-5ms", "linger-5ms"]),
    help="Experiment: patch the worker at start (repeatable; see notifyd.tools.bench.run)",
)
@click.option(
    "--worker-env",
    "worker_env",
    multiple=True,
    metavar="NOTIFYD_NAME=VALUE",
    help="A setting for every worker, e.g. NOTIFYD_FAST_RESTORE=false (repeatable)",
)
@click.option(
    "--sink-latency-ms",
    type=click.FloatRange(min=0),
    default=0.0,
    show_default=True,
    help="The webhook sink answers after this long (a provider's latency)",
)
@click.option("--workdir", type=click.Path(path_type=Path), help="Keep broker/worker data here")
@click.option("--no-progress", is_flag=True, help="No progress bars")
def bench(**kw: Any) -> None:
    """Measure notifyd against a raw aiokafka floor on one broker (see notifyd.tools.bench.run)."""
    from notifyd.tools.bench.run import BenchOptions, run_bench

    values: dict[str, Any] = BenchOptions.quick_defaults() if kw["quick"] else {}
    for name in ("events", "floor_events", "users", "duration", "state_users", "partitions",
                 "fanout_subscribers", "schedule_entries", "scaling_processes",
                 "sink_requests", "sink_concurrency", "http_events", "http_users"):
        if kw[name] is not None:
            values[name] = kw[name]
    if kw["rates"]:
        try:
            values["rates"] = tuple(int(r) for r in kw["rates"].split(",") if r.strip())
        except ValueError as exc:
            raise click.UsageError(f"--rates: {exc}") from exc
        if not values["rates"] or min(values["rates"]) <= 0:
            raise click.UsageError("--rates needs positive integers")
    worker_env: list[tuple[str, str]] = []
    for item in kw["worker_env"]:
        name, sep, value = item.partition("=")
        if not sep or not name.startswith("NOTIFYD_"):
            raise click.UsageError(f"--worker-env wants NOTIFYD_NAME=VALUE, got {item!r}")
        worker_env.append((name, value))
    opts = BenchOptions(
        broker=kw["broker_kind"],
        broker_url=kw["broker_url"],
        skip_state=kw["skip_state"],
        skip_failover=kw["skip_failover"],
        skip_notifyd=kw["skip_notifyd"],
        skip_schedule=kw["skip_schedule"],
        skip_floor=kw["skip_floor"],
        skip_fanout=kw["skip_fanout"],
        skip_sink=kw["skip_sink"],
        skip_http=kw["skip_http"],
        skip_quix=kw["skip_quix"],
        out=kw["out"],
        profile=kw["profile"],
        worker_log_level=kw["worker_log_level"],
        worker_patches=tuple(kw["worker_patches"]),
        worker_env=tuple(worker_env),
        sink_latency_ms=kw["sink_latency_ms"],
        workdir=kw["workdir"],
        progress=not kw["no_progress"],
        **values,
    )
    run_bench(opts)


# Operator commands (prefs, user, token) live in their own module.
from notifyd.cli.admin import register  # noqa: E402
from notifyd.tools.sandbox.cli import sandbox  # noqa: E402

register(main)
main.add_command(sandbox)

if __name__ == "__main__":  # pragma: no cover
    main()
