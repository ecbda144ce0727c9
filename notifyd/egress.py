"""Egress policy: which addresses notifyd may connect to for a **user-chosen** destination.

A user picks their webhook URL and Apprise URLs; without a policy any user could make
the worker call 127.0.0.1, the cloud metadata service (169.254.169.254) or a private
service (SSRF).  Every user-chosen destination goes through one :class:`EgressPolicy`:

* denied by default: loopback, private (RFC 1918), link-local (incl. metadata),
  unique-local ``fc00::/7``, unspecified, CGNAT ``100.64/10``, multicast, broadcast,
  documentation/benchmark/reserved ranges, the IPv6 forms that embed such an IPv4
  address (``::ffff:127.0.0.1``, NAT64 ``64:ff9b::/96``, 6to4 ``2002::/16``) and the
  host names ``localhost``, ``*.localhost`` and their aliases;
* ``NOTIFYD_EGRESS_ALLOW`` (CIDRs and host names, comma-separated) re-admits what a
  deployment or a test needs (``127.0.0.1/32``, ``sink.internal``, ``*.corp.example``);
* checked on the address actually connected to, at connect time, so a host name that
  resolves (or re-resolves: DNS rebinding) to a denied address is never connected to:
  :func:`notifyd.providers.http.egress_connector` for aiohttp (a filtering resolver
  plus a socket factory that checks every socket address), :func:`guard_sockets` for
  synchronous libraries in a worker thread (Apprise): an audit hook on
  ``socket.connect`` scoped by a context variable, so it checks every connection made
  in that call, redirects included.

Operator-configured destinations (SMTP relay, SMS/push API URLs) are not user-chosen
and do not go through the policy.  A refusal is :class:`EgressDenied`: a permanent
delivery error (reason ``egress_denied: ...``, the class of address, never the
address) that is also an ``OSError``, so socket-level callers treat it like a refused
connection and try the next address.
"""

from __future__ import annotations

import contextlib
import contextvars
import ipaddress
import socket
import sys
import threading
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from typing import Any, Protocol
from urllib.parse import urlsplit

from notifyd.errors import PermanentDeliveryError


class EgressSettings(Protocol):
    """What the policy reads of the settings: the config validates ``egress_allow``
    with :meth:`EgressPolicy.parse`, so this module must not import the config."""

    @property
    def egress_allow(self) -> str: ...


IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address
IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network

#: Ranges refused by default, with the label a refusal names (first match wins).
_DENIED: tuple[tuple[IPNetwork, str], ...] = tuple(
    (ipaddress.ip_network(cidr), label)
    for cidr, label in (
        ("0.0.0.0/8", "unspecified"),
        ("10.0.0.0/8", "private"),
        ("100.64.0.0/10", "shared (CGNAT)"),
        ("127.0.0.0/8", "loopback"),
        ("169.254.0.0/16", "link-local"),
        ("172.16.0.0/12", "private"),
        ("192.0.0.0/24", "reserved"),
        ("192.0.2.0/24", "documentation"),
        ("192.88.99.0/24", "reserved"),
        ("192.168.0.0/16", "private"),
        ("198.18.0.0/15", "benchmarking"),
        ("198.51.100.0/24", "documentation"),
        ("203.0.113.0/24", "documentation"),
        ("224.0.0.0/4", "multicast"),
        ("255.255.255.255/32", "broadcast"),
        ("240.0.0.0/4", "reserved"),
        ("::/128", "unspecified"),
        ("::1/128", "loopback"),
        ("::/96", "reserved (IPv4-compatible)"),
        ("::ffff:0:0:0/96", "reserved (IPv4-translated)"),
        ("64:ff9b:1::/48", "reserved (local NAT64)"),
        ("100::/64", "reserved"),
        ("2001::/23", "reserved"),
        ("2001:db8::/32", "documentation"),
        ("3fff::/20", "documentation"),
        ("5f00::/16", "reserved"),
        ("fc00::/7", "unique-local"),
        ("fe80::/10", "link-local"),
        ("fec0::/10", "site-local"),
        ("ff00::/8", "multicast"),
    )
)
_NAT64 = ipaddress.IPv6Network("64:ff9b::/96")

#: Host names that always mean this machine (RFC 6761 and common /etc/hosts aliases).
_LOCAL_NAMES = frozenset(
    {
        "localhost",
        "localhost.localdomain",
        "localhost4",
        "localhost4.localdomain4",
        "localhost6",
        "localhost6.localdomain6",
        "ip6-localhost",
        "ip6-loopback",
    }
)


class EgressDenied(PermanentDeliveryError, PermissionError):
    """A user-chosen destination the egress policy refuses: never retried.

    Also a ``PermissionError`` so that code between notifyd and the socket (aiohttp,
    urllib3) handles it like a refused connection: it tries the next address of the
    host, then reports the connection failure, which notifyd maps back to this error.
    """

    def __init__(self, what: str, label: str) -> None:
        kind = label if label.endswith(" name") else f"{label} address"
        super().__init__(f"egress_denied: {what} destination refused ({kind})")
        self.what = what
        self.label = label


def _normal_host(host: str) -> str:
    return host.strip().strip("[]").rstrip(".").lower()


def _parse_ip(text: str) -> IPAddress | None:
    # A scope id ("fe80::1%eth0") does not change which range an address is in.
    try:
        return ipaddress.ip_address(text.split("%", 1)[0])
    except ValueError:
        return None


def _embedded_v4(ip: IPAddress) -> ipaddress.IPv4Address | None:
    """The IPv4 address an IPv6 one stands for (mapped, NAT64, 6to4), if any."""
    if not isinstance(ip, ipaddress.IPv6Address):
        return None
    if ip.ipv4_mapped is not None:
        return ip.ipv4_mapped
    if ip in _NAT64:
        return ipaddress.IPv4Address(int(ip) & 0xFFFFFFFF)
    return ip.sixtofour


def classify(ip: IPAddress) -> str | None:
    """The label of the denied range ``ip`` is in, or None for a public address."""
    v4 = _embedded_v4(ip)
    if v4 is not None:
        inner = classify(v4)
        return None if inner is None else f"{inner} (IPv4 in IPv6)"
    for net, label in _DENIED:
        if ip.version == net.version and ip in net:
            return label
    # The explicit list above is the policy; the ipaddress properties are a net for
    # ranges it misses (IANA special-purpose registries grow).
    if ip.is_unspecified:
        return "unspecified"
    if ip.is_loopback:
        return "loopback"
    if ip.is_link_local:
        return "link-local"
    if ip.is_multicast:
        return "multicast"
    if ip.is_private:
        return "private"
    if ip.is_reserved or not ip.is_global:
        return "reserved"
    return None


def url_host(url: str) -> str | None:
    """The host part of a URL (lower-case, no brackets or trailing dot), or None."""
    try:
        host = urlsplit(url.strip()).hostname
    except ValueError:
        return None
    return _normal_host(host) if host else None


@dataclass(frozen=True, slots=True)
class EgressPolicy:
    """Deny-by-default policy for user-chosen destinations, with an allow-list."""

    allow_networks: tuple[IPNetwork, ...] = ()
    #: Exact host names allowed (whatever they resolve to).
    allow_hosts: frozenset[str] = frozenset()
    #: ``*.example.com`` entries, kept as ``.example.com``.
    allow_suffixes: tuple[str, ...] = ()

    @classmethod
    def parse(cls, spec: str) -> EgressPolicy:
        """A policy from ``NOTIFYD_EGRESS_ALLOW`` syntax; ValueError names a bad entry."""
        networks: list[IPNetwork] = []
        hosts: set[str] = set()
        suffixes: list[str] = []
        for raw in spec.split(","):
            entry = raw.strip()
            if not entry:
                continue
            try:
                networks.append(ipaddress.ip_network(entry.strip("[]"), strict=False))
                continue
            except ValueError:
                pass
            name = _normal_host(entry)
            wildcard = name.startswith("*.")
            label_part = name[2:] if wildcard else name
            labels = label_part.split(".")
            if not label_part or "/" in name or not all(
                lab and len(lab) <= 63 and lab.replace("-", "").replace("_", "").isalnum()
                and lab.isascii()
                for lab in labels
            ):
                raise ValueError(
                    f"egress allow-list entry {entry!r} is neither a CIDR nor a host name"
                )
            if wildcard:
                suffixes.append("." + label_part)
            else:
                hosts.add(name)
        return cls(tuple(networks), frozenset(hosts), tuple(suffixes))

    @classmethod
    def from_settings(cls, settings: EgressSettings) -> EgressPolicy:
        return cls.parse(settings.egress_allow)

    # --- decisions ----------------------------------------------------------------------

    def host_allowed(self, host: str) -> bool:
        """Is ``host`` (a name) on the allow-list, so whatever it resolves to is admitted?"""
        name = _normal_host(host)
        return name in self.allow_hosts or any(name.endswith(s) for s in self.allow_suffixes)

    def address_denial(self, address: str | IPAddress) -> str | None:
        """Why ``address`` is refused (a label), or None if it may be connected to."""
        ip = _parse_ip(address) if isinstance(address, str) else address
        if ip is None:
            return "unresolved"
        label = classify(ip)
        if label is None:
            return None
        v4 = _embedded_v4(ip)
        for candidate in (ip, v4):
            if candidate is not None and any(
                candidate.version == net.version and candidate in net
                for net in self.allow_networks
            ):
                return None
        return label

    def host_denial(self, host: str) -> str | None:
        """What can be refused from the host alone (a literal IP, ``localhost``), before
        any resolution; None means "resolve it, the addresses decide"."""
        name = _normal_host(host)
        if self.host_allowed(name):
            return None
        ip = _parse_ip(name)
        if ip is not None:
            return self.address_denial(ip)
        if name in _LOCAL_NAMES or name.endswith(".localhost"):
            return "local host name"
        return None

    def check_host(self, host: str, what: str) -> None:
        label = self.host_denial(host)
        if label is not None:
            raise EgressDenied(what, label)

    def check_address(self, address: str, what: str) -> None:
        label = self.address_denial(address)
        if label is not None:
            raise EgressDenied(what, label)

    def check_url(self, url: str, what: str) -> None:
        """Pre-flight check of a URL (no DNS): refuses literal denied hosts early.

        Not the guard: a host name is only judged on what it resolves to at connect
        time (``providers.http.egress_connector``, :func:`guard_sockets`).
        """
        host = url_host(url)
        if host:
            self.check_host(host, what)

    def vouched_addresses(self, host: str) -> frozenset[str]:
        """The addresses an allow-listed host name resolves to now (blocking DNS)."""
        if not host or not self.host_allowed(host) or _parse_ip(_normal_host(host)):
            return frozenset()
        try:
            infos = socket.getaddrinfo(_normal_host(host), None, type=socket.SOCK_STREAM)
        except OSError:
            return frozenset()
        return frozenset(str(info[4][0]) for info in infos)


def denial_in(exc: BaseException) -> EgressDenied | None:
    """The :class:`EgressDenied` behind a (wrapped) connection error, if any."""
    seen: set[int] = set()
    todo: list[BaseException | None] = [exc]
    while todo:
        cur = todo.pop()
        if cur is None or id(cur) in seen:
            continue
        seen.add(id(cur))
        if isinstance(cur, EgressDenied):
            return cur
        todo.extend((getattr(cur, "os_error", None), cur.__cause__, cur.__context__))
        todo.extend(a for a in cur.args if isinstance(a, BaseException))
    return None


# --- synchronous libraries in a thread: an audit hook scoped by a context variable ----------


@dataclass(slots=True)
class SocketGuard:
    """The policy applied to every ``socket.connect`` made while it is current."""

    policy: EgressPolicy
    what: str
    vouched: frozenset[str] = frozenset()
    denials: list[EgressDenied] = field(default_factory=list)

    def check(self, family: int, address: Any) -> None:
        if family not in (socket.AF_INET, socket.AF_INET6):
            self._deny("non-IP")
        host = str(address[0]) if isinstance(address, tuple) and address else ""
        if host in self.vouched:
            return
        if _parse_ip(host) is None:
            # Python resolves a name passed to connect() itself; the libraries used
            # here resolve first, so a name is refused rather than judged twice.
            self._deny("unresolved")
        label = self.policy.address_denial(host)
        if label is not None:
            self._deny(label)

    def _deny(self, label: str) -> None:
        err = EgressDenied(self.what, label)
        self.denials.append(err)
        raise err


_GUARD: contextvars.ContextVar[SocketGuard | None] = contextvars.ContextVar(
    "notifyd_egress_guard", default=None
)
_hook_lock = threading.Lock()
_hook_installed = False


def _audit(event: str, args: tuple[Any, ...]) -> None:
    if event != "socket.connect":
        return
    guard = _GUARD.get()
    if guard is not None:
        sock, address = args
        guard.check(sock.family, address)


def install_socket_guard() -> None:
    """Install the ``socket.connect`` audit hook, once per process.

    Audit hooks cannot be removed; outside :func:`guard_sockets` it returns at once.
    """
    global _hook_installed
    with _hook_lock:
        if not _hook_installed:
            sys.addaudithook(_audit)
            _hook_installed = True


@contextlib.contextmanager
def guard_sockets(
    policy: EgressPolicy, what: str, hosts: Iterable[str] = ()
) -> Iterator[SocketGuard]:
    """Check every ``socket.connect`` made in this context (this thread, or tasks and
    threads that copy the context) against ``policy``.  ``hosts``: the user's host
    names, so an allow-listed one has its current addresses admitted."""
    install_socket_guard()
    vouched: frozenset[str] = frozenset()
    for host in hosts:
        vouched |= policy.vouched_addresses(host)
    guard = SocketGuard(policy, what, vouched)
    token = _GUARD.set(guard)
    try:
        yield guard
    finally:
        _GUARD.reset(token)
