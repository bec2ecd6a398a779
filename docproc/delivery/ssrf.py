"""SSRF guard for outbound callbacks (webhooks): which URLs docproc may connect to.

A callback URL is a place a tenant picks; without a guard it could make docproc's
workers call the cloud metadata service (169.254.169.254), Redis on loopback or any
host in the private network. :func:`resolve_target` therefore

- accepts only ``http`` and ``https`` URLs with a host and no user-info;
- resolves the host (every address it resolves to must pass, so a name that answers
  with one public and one private address is refused);
- refuses addresses that are not globally routable: loopback, RFC 1918, link-local
  (incl. 169.254.169.254), CGNAT 100.64.0.0/10, unspecified (0.0.0.0, ::), multicast,
  reserved/documentation ranges, IPv6 ULA (fc00::/7) and link-local (fe80::/10), NAT64
  (64:ff9b::/96, 64:ff9b:1::/48), IPv4-mapped (::ffff:0:0/96), IPv4-compatible (::/96,
  e.g. ``[::169.254.169.254]``: deprecated, and some stacks route it to the IPv4 address)
  and IPv4-translated addresses, and 6to4 (2002::/16) whose embedded IPv4 address is not
  global;
- returns the checked address, which the caller connects to (keeping the URL's host in
  the ``Host`` header and TLS SNI), so a second DNS answer (DNS rebinding) cannot swap
  the address between the check and the connection. Redirects are never followed.

The allow-list (``settings.webhook_allow_hosts``) is for tests and private deployments:
an entry is a host name (matched exactly, case-insensitively, before resolution) or an
IP network in CIDR form (``127.0.0.1/32``, ``10.0.0.0/8``; a bare IP is a /32 or /128)
that the resolved addresses may fall in.
"""

from __future__ import annotations

import ipaddress
import socket
from dataclasses import dataclass
from urllib.parse import urlsplit

from docproc.base.errors import WebhookUrlRefused

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address
IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network

_BLOCKED_NETWORKS: tuple[IPNetwork, ...] = tuple(
    ipaddress.ip_network(n)
    for n in (
        "0.0.0.0/8", "10.0.0.0/8", "100.64.0.0/10", "127.0.0.0/8", "169.254.0.0/16", "172.16.0.0/12",
        "192.0.0.0/24", "192.0.2.0/24", "192.168.0.0/16", "198.18.0.0/15", "198.51.100.0/24",
        "203.0.113.0/24", "224.0.0.0/4", "240.0.0.0/4", "255.255.255.255/32",
        "::/128", "::1/128", "::ffff:0:0/96", "::ffff:0:0:0/96", "64:ff9b::/96", "64:ff9b:1::/48",
        "100::/64", "2001::/32", "2001:db8::/32", "fc00::/7", "fe80::/10", "fec0::/10", "ff00::/8",
    )
)  # fmt: skip
_SIX_TO_FOUR = ipaddress.ip_network("2002::/16")
_IPV4_COMPATIBLE = ipaddress.ip_network("::/96")


@dataclass(frozen=True)
class Target:
    """A checked callback URL: where to connect (``ip``) and what to say (``host``, ``path``)."""

    scheme: str
    host: str  # as in the URL (lower-cased), for the Host header and SNI
    port: int
    path: str  # path and query, at least "/"
    ip: str

    @property
    def host_header(self) -> str:
        default = 443 if self.scheme == "https" else 80
        host = f"[{self.host}]" if ":" in self.host else self.host
        return host if self.port == default else f"{host}:{self.port}"

    @property
    def connect_url(self) -> str:
        """The URL with the checked IP in place of the host name."""
        ip = f"[{self.ip}]" if ":" in self.ip else self.ip
        return f"{self.scheme}://{ip}:{self.port}{self.path}"


def refusal_reason(ip: IPAddress) -> str | None:
    """Why ``ip`` may not be called back, or None when it is globally routable."""
    if isinstance(ip, ipaddress.IPv6Address):
        if ip.ipv4_mapped is not None:
            return "an IPv4-mapped IPv6 address"
        if ip in _IPV4_COMPATIBLE:
            return "an IPv4-compatible IPv6 address"
        if ip in _SIX_TO_FOUR and ip.sixtofour is not None and refusal_reason(ip.sixtofour):
            return "a 6to4 address of a non-public IPv4 address"
    if any(ip.version == net.version and ip in net for net in _BLOCKED_NETWORKS):
        return "a non-public address"
    if not ip.is_global or ip.is_multicast:
        return "a non-public address"
    return None


def _parse_allow(entries: list[str]) -> tuple[set[str], list[IPNetwork]]:
    names: set[str] = set()
    nets: list[IPNetwork] = []
    for entry in entries:
        try:
            nets.append(ipaddress.ip_network(entry.strip(), strict=False))
        except ValueError:
            names.add(entry.strip().lower().rstrip("."))
    return names, nets


def split_url(url: str) -> tuple[str, str, int, str]:
    """(scheme, host, port, path+query) of an http(s) URL; WebhookUrlRefused otherwise."""
    try:
        parts = urlsplit(url)
        port = parts.port
    except ValueError as exc:
        raise WebhookUrlRefused(f"the webhook URL is not a valid URL ({exc})") from exc
    scheme = parts.scheme.lower()
    if scheme not in ("http", "https"):
        raise WebhookUrlRefused("the webhook URL must be http:// or https://", reason="scheme")
    if parts.username is not None or parts.password is not None:
        raise WebhookUrlRefused("the webhook URL must not carry credentials (user:password@)", reason="userinfo")
    host = (parts.hostname or "").lower().rstrip(".")
    if not host:
        raise WebhookUrlRefused("the webhook URL has no host", reason="host")
    path = parts.path or "/"
    if parts.query:
        path += "?" + parts.query
    return scheme, host, port or (443 if scheme == "https" else 80), path


def resolve_target(url: str, allow: list[str] | tuple[str, ...] = ()) -> Target:
    """Check ``url`` and resolve its host now; the Target to connect to, or WebhookUrlRefused.

    Called at submission and again before every delivery attempt (the answer may change).
    """
    scheme, host, port, path = split_url(url)
    names, nets = _parse_allow(list(allow))
    try:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    except (socket.gaierror, UnicodeError, OSError) as exc:
        raise WebhookUrlRefused(f"the webhook host {host!r} does not resolve", reason="dns") from exc
    addresses: list[IPAddress] = []
    for info in infos:
        ip = ipaddress.ip_address(str(info[4][0]).split("%", 1)[0])
        if ip not in addresses:
            addresses.append(ip)
    if not addresses:
        raise WebhookUrlRefused(f"the webhook host {host!r} does not resolve", reason="dns")
    if host not in names:
        for ip in addresses:
            if any(ip.version == net.version and ip in net for net in nets):
                continue
            reason = refusal_reason(ip)
            if reason is not None:
                raise WebhookUrlRefused(f"the webhook host {host!r} resolves to {reason}", reason="address")
    return Target(scheme=scheme, host=host, port=port, path=path, ip=str(addresses[0]))
