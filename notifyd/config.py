"""The one settings object of notifyd, read from ``NOTIFYD_*`` environment variables.

Everything configurable is declared here and read nowhere else: modules take a
:class:`Settings` (or the process-wide one from :func:`get_settings`).  Secrets are
``SecretStr`` so they never show up in ``repr``, logs or ``notifyd config``.
"""

from __future__ import annotations

import functools
from datetime import datetime
from pathlib import Path
from typing import Any, Literal

from pydantic import Field, SecretStr, ValidationInfo, field_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from notifyd.egress import EgressPolicy
from notifyd.providers.spec import ProviderSpec, masked, parse_providers

CHANNELS: tuple[str, ...] = ("email", "sms", "push", "webhook", "inapp")
#: Email's default concurrency when ``email_concurrency`` is 0 (see there).
SMTP_DEFAULT_CONCURRENCY = 8


class Settings(BaseSettings):
    model_config = SettingsConfigDict(
        env_prefix="NOTIFYD_", env_file=None, extra="ignore", validate_default=True,
        # A bad value is named, never echoed: it may be a secret (tokens, provider URLs).
        hide_input_in_errors=True,
    )

    # --- identity, broker, storage ------------------------------------------------
    app_id: str = "notifyd"
    #: ``kafka://host:port[;host:port]`` of an existing cluster (any Kafka-compatible broker).
    broker_url: str = "kafka://127.0.0.1:9092"
    #: Prefix of every topic name (``<prefix>.events`` ...).
    topic_prefix: str = Field(default="notifyd", pattern=r"^[A-Za-z0-9._-]{1,100}$")
    #: Partitions of every notifyd topic; all topics are co-partitioned by user.
    topic_partitions: int = Field(default=8, ge=1, le=1024)
    topic_replication: int = Field(default=1, ge=1)
    #: How long the group waits for a silent worker before moving its partitions.
    broker_session_timeout_s: float = Field(default=30.0, ge=6.0)
    datadir: Path = Path("var/notifyd")
    #: Faust table store: ``memory://`` or ``rocksdb://`` (RocksDB through rocksdict).
    table_store: str = "memory://"
    #: With ``rocksdb://``: before Faust starts, read each table changelog to its end with
    #: a plain consumer into the local RocksDB files (notifyd.stream.restore; Faust then
    #: recovers only the tail).  Off: Faust's own recovery reads everything.
    fast_restore: bool = True
    #: Standby replicas of tables kept by other workers (faster failover).
    table_standby_replicas: int = Field(default=0, ge=0)

    # --- web view --------------------------------------------------------------------
    web_host: str = "127.0.0.1"
    #: 1-65535.  Not 0 ("any free port"): other workers forward table look-ups to the
    #: URL each worker announces when it joins the group, so the port must be known first.
    web_port: int = Field(default=6066, ge=1, le=65535)
    #: URL other workers use to reach this one (table routing); derived when empty.
    web_canonical_url: str = ""
    max_request_bytes: int = Field(default=64 * 1024, ge=1024)

    # --- credential store (sessions, refresh tokens, revoked jti) -------------------
    #: ``redis://host:port/db`` or ``sqlite:///path``; empty means SQLite in ``datadir``.
    credential_store_url: str = ""
    session_ttl_s: int = Field(default=3600, ge=1)

    # --- tokens and OIDC --------------------------------------------------------------
    jwt_secret: SecretStr = SecretStr("")
    jwt_issuer: str = "notifyd"
    jwt_audience: str = "notifyd-api"
    jwt_ttl_s: int = Field(default=3600, ge=1)
    oidc_discovery_url: str = ""
    oidc_issuer: str = ""
    oidc_authorize_url: str = ""
    oidc_token_url: str = ""
    oidc_jwks_url: str = ""
    oidc_client_id: str = ""
    oidc_client_secret: SecretStr = SecretStr("")
    oidc_redirect_url: str = ""
    oidc_scopes: str = "openid email profile"

    # --- pipeline rules ----------------------------------------------------------------
    dedupe_ttl_s: int = Field(default=7 * 24 * 3600, ge=60)
    throttle_limit: int = Field(default=20, ge=0, description="0 disables the throttle")
    throttle_window_s: int = Field(default=3600, ge=1)
    throttle_mode: Literal["defer", "suppress"] = "defer"
    inbox_max_items: int = Field(default=200, ge=1)
    max_event_bytes: int = Field(default=256 * 1024, ge=1024)
    default_locale: str = "en"
    #: Directory of ``<name>.json`` templates; empty means the examples shipped in the package.
    templates_dir: Path | None = None
    #: Deliveries each channel agent keeps in flight (per worker); one user's are sent
    #: in order.  1 = one at a time per channel.
    delivery_concurrency: int = Field(default=32, ge=1, le=1024)
    #: Per channel: provider calls one worker keeps in flight on that channel (one
    #: user's stay in order); 0 = ``delivery_concurrency``.  Email's 0 means at most
    #: ``SMTP_DEFAULT_CONCURRENCY`` (8): SMTP relays commonly cap connections per client
    #: and answer more with 421, and each send opens a connection.
    email_concurrency: int = Field(default=0, ge=0, le=1024)
    sms_concurrency: int = Field(default=0, ge=0, le=1024)
    push_concurrency: int = Field(default=0, ge=0, le=1024)
    webhook_concurrency: int = Field(default=0, ge=0, le=1024)
    #: Per provider: calls per second one worker makes to it (token bucket, bursts of up
    #: to one second's worth); 0 = no limit.  Other channels never wait for it.
    email_rate_limit: float = Field(default=0.0, ge=0.0)
    sms_rate_limit: float = Field(default=0.0, ge=0.0)
    push_rate_limit: float = Field(default=0.0, ge=0.0)
    #: The status agent folds up to this many ``notifyd.status`` records at a time, one
    #: table write (changelog record) per notification, waiting at most
    #: ``status_batch_wait_s`` to fill a batch (status is not on the delivery path).
    status_batch_max: int = Field(default=500, ge=1, le=10_000)
    status_batch_wait_s: float = Field(default=0.01, gt=0.0, le=1.0)
    status_ttl_s: int = Field(default=30 * 24 * 3600, ge=60)
    #: The hot path (ingest, deliveries, status) in batch lanes on Faust's assignment
    #: (``notifyd.stream.lanes``); false: Faust's per-record streams, as before.
    batch_lanes: bool = True
    #: A delivery decided while its event is handled goes straight to its channel's lane
    #: in this worker when that lane has taken up everything of the partition before it
    #: and has a slot free (``notifyd.stream.handoff``); the event is acked once the
    #: delivery is done.  Else (and with false) it goes through its channel topic.
    direct_delivery: bool = True
    #: Records a lane may hold fetched and unhandled before its partitions sit out fetches.
    lane_backlog: int = Field(default=2000, ge=1, le=1_000_000)
    #: While busy (200+ records/s), the broker holds a fetch up to this long to gather
    #: ``fetch_min_bytes`` (when quiet: Faust's own 1500 ms for 1 byte; a fetch per
    #: record or two under load).  ``notifyd.stream.lanes.FetchPacer``.
    fetch_max_wait_ms: int = Field(default=5, ge=0, le=1500)
    fetch_min_bytes: int = Field(default=1 << 20, ge=1, le=64 << 20)
    #: Behind (lanes hold ``fetch_behind_backlog`` fetched records or more): the broker
    #: may hold a fetch this long instead; fewer, fuller fetches leave more CPU to the
    #: handlers.  0: as busy.
    fetch_behind_wait_ms: int = Field(default=25, ge=0, le=1500)
    fetch_behind_backlog: int = Field(default=1000, ge=1, le=1_000_000)
    #: While busy, topics of a few records a minute (preferences, control, subscriptions,
    #: callbacks) are fetched once per this interval, not in every fetch
    #: (``notifyd.stream.fetching``).  0: in every fetch.
    fetch_cold_interval_ms: int = Field(default=50, ge=0, le=1000)
    #: Incremental fetch sessions (KIP-227): a fetch lists only the partitions whose
    #: position moved, and the broker answers only for those with records
    #: (``notifyd.stream.fetching``).  With them, cold topics cost nothing per fetch and
    #: ``fetch_cold_interval_ms`` is not used.
    fetch_sessions: bool = True
    #: A channel still queued/retrying/deferred this long after it was due is re-queued
    #: (the ledger drops it if it was in fact sent): the safety net for records a
    #: crash or rebalance left unprocessed.
    requeue_after_s: float = Field(default=120.0, ge=5.0)
    #: Start the worker's clock at this instant (it then advances in real time).
    #: For simulations and tests of time rules (quiet hours); unset in production.
    clock_start: datetime | None = None
    #: An event scheduled further ahead (``send_at``/``delay_s``) is dead-lettered.
    max_schedule_days: float = Field(default=365.0, gt=0)
    #: Titles listed in a digest message (the count covers every item).
    digest_max_titles: int = Field(default=10, ge=1, le=200)

    # --- retries -------------------------------------------------------------------------
    retry_max_attempts: int = Field(default=5, ge=1)
    retry_base_s: float = Field(default=1.0, gt=0)
    retry_max_s: float = Field(default=300.0, gt=0)

    # --- providers ----------------------------------------------------------------------
    smtp_host: str = "127.0.0.1"
    smtp_port: int = Field(default=25, ge=0, le=65535)
    smtp_username: str = ""
    smtp_password: SecretStr = SecretStr("")
    smtp_starttls: bool = False
    smtp_tls: bool = False
    smtp_from: str = "notifyd@localhost"
    smtp_timeout_s: float = Field(default=10.0, gt=0)
    sms_api_url: str = "http://127.0.0.1:8025/v1/sms"
    sms_api_token: SecretStr = SecretStr("")
    sms_sender: str = "notifyd"
    push_api_url: str = "http://127.0.0.1:8025/v1/push"
    push_api_token: SecretStr = SecretStr("")
    webhook_secret: SecretStr = SecretStr("")
    #: Deliver push notifications to users' ``apprise_urls`` too (notifyd.providers.apprise).
    apprise_enabled: bool = True
    #: Comma-separated Apprise services users may name (e.g. ``json,form,mailto``); empty: all.
    apprise_schemes: str = ""
    apprise_timeout_s: float = Field(default=10.0, gt=0)
    http_timeout_s: float = Field(default=10.0, gt=0)
    #: Egress allow-list for user-chosen destinations (webhook and Apprise URLs), which
    #: may not reach loopback, private, link-local (metadata), CGNAT, multicast or
    #: reserved addresses (notifyd.egress): comma-separated CIDRs and host names
    #: (``*.example.com`` for subdomains) re-admitted, e.g. ``127.0.0.1/32`` for tests.
    #: Operator-set URLs (SMTP host, SMS/push API) are not subject to it.
    egress_allow: str = ""
    #: Providers of a channel, tried in order (failover), separated by spaces: built-in
    #: names (email ``smtp``; sms and push ``http``, notifyd's HTTP format; webhook
    #: ``webhook``) and/or Apprise service URLs with per-recipient placeholders in their
    #: path or query, e.g. ``twilio://SID:TOKEN@+15550001111/{phone}``, ``[name=]URL``
    #: (notifyd.providers.spec).  Empty: the built-in provider alone.  Secrets (the URLs
    #: carry credentials): only names and schemes are shown by ``notifyd config``.
    email_providers: SecretStr = SecretStr("")
    sms_providers: SecretStr = SecretStr("")
    push_providers: SecretStr = SecretStr("")
    webhook_providers: SecretStr = SecretStr("")
    #: Consecutive retriable failures after which a provider's circuit opens: the
    #: deliveries skip it (to the channel's next provider) for ``circuit_cooldown_s``,
    #: then one probe delivery decides whether it closes (notifyd.providers.chain).
    circuit_failures: int = Field(default=5, ge=1)
    circuit_cooldown_s: float = Field(default=30.0, gt=0)

    # --- e-mail unsubscribe (List-Unsubscribe, RFC 2369; one-click POST, RFC 8058) -------
    #: Add ``List-Unsubscribe`` (signed https link + mailto:) and ``List-Unsubscribe-Post``
    #: to every e-mail; false omits them (e.g. a purely transactional sender).
    email_unsubscribe: bool = True
    #: Base URL at which mail recipients reach the web view (links in e-mail).  Mailbox
    #: providers only honour one-click unsubscribe over https.  Empty: the canonical URL.
    public_url: str = Field(default="", pattern=r"^(https?://[^\s<>,]+)?$")
    #: HMAC key of unsubscribe links (at least 32 bytes, the same on every worker).  Empty:
    #: derived from the JWT secret (HKDF), so changing that one also voids old links.
    unsubscribe_secret: SecretStr = SecretStr("")
    #: Address of the ``mailto:`` unsubscribe (its subject carries the signed token; notifyd
    #: does not read that mailbox).  Empty: the address of ``smtp_from``.
    unsubscribe_mailto: str = Field(default="", pattern=r"^([^\s<>,?@]+@[^\s<>,?@]+)?$")

    # --- delivery callbacks to producers (notifyd.stream.callbacks) --------------------------
    #: Default URL notifyd POSTs each terminal delivery state to (an event's own
    #: ``callback_url`` wins); empty: no callbacks unless the event names one.  Subject
    #: to the egress policy like users' webhooks.
    callback_url: str = ""
    #: HMAC key of callbacks' ``X-Notifyd-Signature``; empty: ``webhook_secret``.
    callback_secret: SecretStr = SecretStr("")
    #: Attempts per callback (retriable failures back off like deliveries), then ``dead``.
    callback_max_attempts: int = Field(default=5, ge=1)

    #: Event loop of the worker: the standard asyncio loop, or uvloop (the asyncio loop
    #: is ~17% of the worker's time; uvloop is not yet verified by the crash test).
    event_loop: Literal["uvloop", "asyncio"] = "asyncio"
    #: Allocations between two young-generation collections of Python's cyclic garbage
    #: collector (Python's own: 700; 0 keeps it).  With tables in the heap (``memory://``)
    #: the default let the collector take ~20 % of a busy worker (notifyd.stream.heap).
    gc_young_threshold: int = Field(default=50_000, ge=0)
    #: Once the tables are recovered, move what is alive to the collector's permanent
    #: generation (``gc.freeze``), so full collections no longer walk every table row.
    gc_freeze_after_recovery: bool = True

    # --- logging ------------------------------------------------------------------------
    log_format: Literal["json", "console"] = "json"
    log_level: str = "INFO"

    @field_validator("broker_url")
    @classmethod
    def _broker_url(cls, v: str) -> str:
        if not v.startswith(("kafka://", "aiokafka://")):
            raise ValueError("broker_url must look like kafka://host:port[;host:port]")
        return v

    @field_validator("egress_allow")
    @classmethod
    def _egress_allow(cls, v: str) -> str:
        EgressPolicy.parse(v)  # ValueError names the bad entry
        return v

    @field_validator("unsubscribe_secret")
    @classmethod
    def _unsubscribe_secret(cls, v: SecretStr) -> SecretStr:
        if v.get_secret_value() and len(v.get_secret_value().encode()) < 32:
            raise ValueError("unsubscribe_secret must be at least 32 bytes (or empty)")
        return v

    @field_validator("email_providers", "sms_providers", "push_providers", "webhook_providers")
    @classmethod
    def _providers(cls, v: SecretStr, info: ValidationInfo) -> SecretStr:
        # ValueError names the entry by position, never quotes the URL.
        parse_providers(str(info.field_name).removesuffix("_providers"), v.get_secret_value())
        return v

    def provider_specs(self, channel: str) -> list[ProviderSpec]:
        """The ordered providers of ``channel`` (see :mod:`notifyd.providers.spec`)."""
        field: SecretStr = getattr(self, f"{channel}_providers")
        return parse_providers(channel, field.get_secret_value())

    @property
    def bootstrap_servers(self) -> list[str]:
        """``host:port`` list for raw aiokafka clients (admin, producers in tests/bench)."""
        rest = self.broker_url.split("://", 1)[1]
        return [s.strip() for s in rest.replace(",", ";").split(";") if s.strip()]

    def concurrency_for(self, channel: str) -> int:
        """Deliveries the agent of ``channel`` keeps in flight (see ``*_concurrency``)."""
        own = int(getattr(self, f"{channel}_concurrency", 0) or 0)
        if own:
            return own
        if channel == "email":
            return min(SMTP_DEFAULT_CONCURRENCY, self.delivery_concurrency)
        return self.delivery_concurrency

    def rate_limit_for(self, channel: str) -> float:
        """Provider calls per second allowed on ``channel``; 0 = unlimited."""
        return float(getattr(self, f"{channel}_rate_limit", 0.0) or 0.0)

    @property
    def resolved_public_url(self) -> str:
        """Base URL of links in e-mail: ``public_url``, else the web view's canonical URL."""
        fallback = f"http://{self.web_host}:{self.web_port}"
        return (self.public_url or self.web_canonical_url or fallback).rstrip("/")

    @property
    def resolved_credential_store_url(self) -> str:
        return self.credential_store_url or f"sqlite:///{self.datadir / 'credentials.db'}"

    def redacted(self) -> dict[str, Any]:
        """Settings as a dict safe to print: secrets masked, set-or-not kept visible."""
        out: dict[str, Any] = {}
        for name, value in self.model_dump().items():
            if isinstance(value, SecretStr):
                out[name] = "**********" if value.get_secret_value() else ""
            elif isinstance(value, Path | datetime):
                out[name] = str(value)
            else:
                out[name] = value
        for name in (
            "credential_store_url",
            "broker_url",
            "sms_api_url",
            "push_api_url",
            "oidc_discovery_url",
            "oidc_token_url",
        ):
            out[name] = _mask_url_password(str(out[name]))
        for channel in ("email", "sms", "push", "webhook"):
            # Names and schemes of the providers, not the URLs' credentials.
            secret: SecretStr = getattr(self, f"{channel}_providers")
            out[f"{channel}_providers"] = masked(channel, secret.get_secret_value())
        return out


def _mask_url_password(url: str) -> str:
    # redis://user:secret@host → redis://user:****@host
    if "@" in url and "://" in url:
        scheme, rest = url.split("://", 1)
        creds, host = rest.rsplit("@", 1)
        if ":" in creds:
            creds = creds.split(":", 1)[0] + ":****"
        return f"{scheme}://{creds}@{host}"
    return url


@functools.lru_cache(maxsize=1)
def get_settings() -> Settings:
    """The process-wide settings, read once from the environment."""
    return Settings()
