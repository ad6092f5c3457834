"""Webhooks: which URLs genq may call, how it signs what it sends, and how receivers check it.

Signature (the scheme of Stripe's Stripe-Signature header): genq sends

    X-Genq-Signature: t=<Unix seconds>,v1=<hex HMAC-SHA256(secret, f"{t}.{body}")>

where body is the raw request body, byte for byte. A receiver recomputes the HMAC with the same
secret (GENQ_WEBHOOK_SECRET), compares in constant time, and rejects a timestamp older than a few
minutes, so a captured request cannot be replayed later. verify_signature() does all three.

Address rule (against server-side request forgery): a URL's host is resolved, and if any of its
addresses is loopback, private, link-local, multicast, reserved, unspecified or otherwise not
globally routable (IPv4-mapped and NAT64 IPv6 forms judged by their IPv4 address), the URL is
refused, unless GENQ_WEBHOOK_ALLOW_PRIVATE is set. The check runs at submission and again at each
delivery, and the POST then goes to the very addresses that were checked (no second lookup that
DNS rebinding could answer differently). Redirects are not followed.
"""

from __future__ import annotations

import hashlib
import hmac
import http.client
import ipaddress
import socket
import ssl
import time
from urllib.parse import urlsplit

SIGNATURE_HEADER = "X-Genq-Signature"  # t=<Unix seconds>,v1=<hex HMAC-SHA256>
EVENT_HEADER = "X-Genq-Event"  # started | completed
DELIVERY_HEADER = "X-Genq-Delivery"  # one id per delivery, the same on its retries
DEFAULT_TOLERANCE_S = 300  # how old a signature's timestamp may be, in seconds
MAX_RESPONSE_BYTES = 65_536  # how much of a receiver's answer is read (then discarded)
NAT64 = ipaddress.ip_network("64:ff9b::/96")  # IPv6 addresses that a NAT64 gateway maps to IPv4

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address


class RefusedURL(ValueError):
    """A webhook URL that genq will not call: its host does not resolve, or not to public addresses."""


def _why_refused(ip: IPAddress) -> str | None:
    """Return why an address may not be called (None when it is public)."""
    if isinstance(ip, ipaddress.IPv6Address):
        embedded = ip.ipv4_mapped or (ipaddress.IPv4Address(int(ip) & 0xFFFFFFFF) if ip in NAT64 else None)
        if embedded is not None:
            return _why_refused(embedded)
    for kind in ("loopback", "private", "link_local", "multicast", "reserved", "unspecified"):
        if getattr(ip, f"is_{kind}"):
            return kind.replace("_", "-")
    return None if ip.is_global else "not globally routable"


def resolve(url: str, allow_private: bool = False) -> list[IPAddress]:
    """Return the addresses a webhook URL's host resolves to; RefusedURL if any may not be called."""
    parts = urlsplit(url)
    host = parts.hostname
    if parts.scheme not in ("http", "https") or not host:
        raise RefusedURL("the URL must be http:// or https:// with a host")
    try:
        infos = socket.getaddrinfo(host, parts.port or 443, type=socket.SOCK_STREAM)
    except (socket.gaierror, UnicodeError) as exc:
        raise RefusedURL(f"host {host!r} does not resolve: {exc}") from None
    found: list[IPAddress] = []
    for _family, _type, _proto, _name, sockaddr in infos:
        ip = ipaddress.ip_address(str(sockaddr[0]).split("%", 1)[0])  # drop an IPv6 zone (fe80::1%eth0)
        reason = None if allow_private else _why_refused(ip)
        if reason is not None:
            raise RefusedURL(f"host {host!r} resolves to {ip}, a {reason} address; webhooks must be public")
        if ip not in found:
            found.append(ip)
    if not found:
        raise RefusedURL(f"host {host!r} has no address")
    return found


def sign(secret: str, body: bytes, timestamp: int | None = None) -> str:
    """Return the X-Genq-Signature value for body, signed now (or at timestamp)."""
    t = int(time.time()) if timestamp is None else timestamp
    mac = hmac.new(secret.encode(), f"{t}.".encode() + body, hashlib.sha256).hexdigest()
    return f"t={t},v1={mac}"


def verify_signature(
    secret: str, header: str | None, body: bytes | str, tolerance_s: float = DEFAULT_TOLERANCE_S
) -> bool:
    """Return True when an X-Genq-Signature header signs this exact body and is at most tolerance_s old.

    For receivers: pass the raw body as received (not re-serialized JSON). Several v1= values are
    accepted, any one matching, so that a sender may sign with an old and a new secret while they
    are rotated. Comparison is constant-time.
    """
    if not header or not secret:
        return False
    raw = body.encode() if isinstance(body, str) else body
    timestamp, candidates = None, []
    for item in header.split(","):
        name, _, value = item.strip().partition("=")
        if name == "t" and value.isdigit():
            timestamp = int(value)
        elif name == "v1":
            candidates.append(value)
    if timestamp is None or not candidates or abs(time.time() - timestamp) > tolerance_s:
        return False
    expected = sign(secret, raw, timestamp).rpartition("v1=")[2]
    return any(hmac.compare_digest(expected.encode(), c.encode()) for c in candidates)


def _connect(addresses: list[IPAddress], port: int, timeout_s: float | None) -> socket.socket:
    """Open a TCP connection to the first of these (already checked) addresses that answers."""
    error: OSError = OSError("no address to connect to")
    for ip in addresses:
        try:
            return socket.create_connection((str(ip), port), timeout=timeout_s)
        except OSError as exc:
            error = exc
    raise error


class _PinnedHTTP(http.client.HTTPConnection):
    """An HTTP connection to checked addresses; the Host header still names the URL's host."""

    def __init__(self, host: str, port: int, addresses: list[IPAddress], timeout_s: float) -> None:
        super().__init__(host, port, timeout=timeout_s)
        self.addresses = addresses

    def connect(self) -> None:
        self.sock = _connect(self.addresses, self.port, self.timeout)


class _PinnedHTTPS(http.client.HTTPSConnection):
    """An HTTPS connection to checked addresses; the certificate must still match the URL's host."""

    def __init__(self, host: str, port: int, addresses: list[IPAddress], timeout_s: float) -> None:
        self.tls = ssl.create_default_context()
        super().__init__(host, port, timeout=timeout_s, context=self.tls)
        self.addresses = addresses

    def connect(self) -> None:
        sock = _connect(self.addresses, self.port, self.timeout)
        self.sock = self.tls.wrap_socket(sock, server_hostname=self.host)


def post(url: str, body: bytes, headers: dict[str, str], timeout_s: float, allow_private: bool) -> int:
    """POST body to url after checking its addresses again; return the HTTP status (no redirects).

    Raises RefusedURL when the host now resolves to an address that may not be called (nothing is
    sent then), and OSError or http.client.HTTPException when the request fails.
    """
    addresses = resolve(url, allow_private)
    parts = urlsplit(url)
    secure = parts.scheme == "https"
    port = parts.port or (443 if secure else 80)
    conn = (_PinnedHTTPS if secure else _PinnedHTTP)(parts.hostname or "", port, addresses, timeout_s)
    path = (parts.path or "/") + (f"?{parts.query}" if parts.query else "")
    try:
        conn.request("POST", path, body=body, headers=headers)
        resp = conn.getresponse()
        resp.read(MAX_RESPONSE_BYTES)
        return resp.status
    finally:
        conn.close()
