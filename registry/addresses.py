"""Client-address allow-lists (IPs and networks), for what is guarded by address rather than by key:
`/metrics` (VOICEPROXY_METRICS_ALLOW) and the Wyoming server (VOICEPROXY_WYOMING_ALLOW)."""

from __future__ import annotations

import ipaddress
from collections.abc import Iterable

Network = ipaddress.IPv4Network | ipaddress.IPv6Network


def networks(entries: Iterable[str]) -> list[Network]:
    """Parse an allow-list ("192.168.1.0/24", "10.0.0.5", "::1"); ValueError names a bad entry."""
    parsed: list[Network] = []
    for entry in entries:
        try:
            parsed.append(ipaddress.ip_network(entry.strip(), strict=False))
        except ValueError as exc:
            raise ValueError(f"{entry!r} is not an IP address or network") from exc
    return parsed


def allowed(address: str, allow: list[Network]) -> bool:
    """Whether a client address is in the list (False for no address, e.g. a Unix socket's peer)."""
    try:
        ip = ipaddress.ip_address(address.split("%", 1)[0])  # an IPv6 zone ("fe80::1%eth0") aside
    except ValueError:
        return False
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        ip = ip.ipv4_mapped  # a dual-stack socket's IPv4 client
    return any(ip.version == net.version and ip in net for net in allow)
