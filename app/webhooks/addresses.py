"""Where a webhook may point: SSRF protection.

A webhook URL must be `https` and every address its host resolves to must be a public one: not
loopback, private (RFC 1918, unique local), link-local (which holds the cloud metadata service,
169.254.169.254), shared (100.64/10), multicast, reserved or unspecified — nor an IPv4 address
hidden in an IPv6 one. `WEBHOOK_ALLOW_PRIVATE` lifts both rules (tests; private networks you trust).
The check runs when a webhook is created or changed (422) and again before every delivery (a
name that resolved to a public address may later resolve to a private one: the delivery then
fails with that reason). Between that check and the connection the name is resolved once more by
the HTTP client; a DNS answer that changes within that instant is not caught (docs/decisions.md).
"""

from __future__ import annotations

import asyncio
import ipaddress
import socket
from urllib.parse import urlsplit

METADATA_HOSTS = {"metadata.google.internal", "metadata", "instance-data"}


class RefusedAddress(ValueError):
    """The URL may not be used; the message says why, for a person."""


def _is_public(address: ipaddress.IPv4Address | ipaddress.IPv6Address) -> bool:
    if isinstance(address, ipaddress.IPv6Address):
        embedded = address.ipv4_mapped or address.sixtofour or (address.teredo[1] if address.teredo else None)
        if embedded is not None:
            return _is_public(embedded)
    return address.is_global and not (address.is_multicast or address.is_reserved or address.is_link_local)


def check_url_shape(url: str, allow_private: bool) -> tuple[str, int]:
    """The URL's host and port, after the checks that need no DNS; RefusedAddress otherwise."""
    try:
        parts = urlsplit(url)
        port = parts.port
    except ValueError as exc:
        raise RefusedAddress(f"not a URL: {exc}") from None
    if parts.scheme not in ("https", "http") or not parts.hostname:
        raise RefusedAddress("must be an https:// URL with a host")
    if parts.scheme == "http" and not allow_private:
        raise RefusedAddress("must use https (plain http is allowed only with WEBHOOK_ALLOW_PRIVATE)")
    if parts.username is not None or parts.password is not None:
        raise RefusedAddress("must not carry a user name or password")
    if parts.fragment:
        raise RefusedAddress("must not have a #fragment")
    host = parts.hostname.rstrip(".").lower()
    if not allow_private and (host in METADATA_HOSTS or host == "localhost" or host.endswith(".localhost")):
        raise RefusedAddress(f"{host} is not a public address")
    return host, port or (443 if parts.scheme == "https" else 80)


async def check_url(url: str, allow_private: bool) -> None:
    """RefusedAddress unless `url` may receive webhooks (resolving its host)."""
    host, port = check_url_shape(url, allow_private)
    if allow_private:
        return
    try:
        literal = ipaddress.ip_address(host.strip("[]"))
    except ValueError:
        literal = None
    if literal is not None:
        addresses = {literal}
    else:
        try:
            infos = await asyncio.get_running_loop().getaddrinfo(host, port, type=socket.SOCK_STREAM)
        except (socket.gaierror, UnicodeError) as exc:
            raise RefusedAddress(f"{host} does not resolve ({exc})") from None
        addresses = {ipaddress.ip_address(str(info[4][0]).split("%")[0]) for info in infos}
    refused = sorted(str(a) for a in addresses if not _is_public(a))
    if refused:
        raise RefusedAddress(f"{host} resolves to an address that is not public ({', '.join(refused)})")
