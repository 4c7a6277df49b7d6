"""CIDR networks (recipe 11.4): one parser for the listeners' --allow/--deny and for apps.cidr.

The two must agree, so they share this module: a rule that means 10.0.0.0/8 to the listener
means 10.0.0.0/8 to `python -m apps.cidr` too.

Host bits.  The recipe's own call, `ip_network('123.45.67.89/27')`, raises ValueError because
host bits are set.  What the writer meant is clear (123.45.67.64/27), so it is accepted and the
caller learns that it was corrected (the listener logs it, apps.cidr says it on stderr);
`strict=True` refuses instead.

IPv4-mapped IPv6.  A dual-stack socket sees an IPv4 client as ``::ffff:10.0.0.1``.  That peer is
an IPv4 client and is judged by IPv4 rules, and a mapped rule (``::ffff:10.0.0.0/104``) is the
IPv4 network it maps (10.0.0.0/8), so that either spelling of a rule meets either spelling of a
peer.  Pure: no sockets, no I/O; logging is the only side effect, and only in parse_networks.
"""
from __future__ import annotations

import ipaddress
import logging
from typing import Iterable

log = logging.getLogger(__name__)

Network = ipaddress.IPv4Network | ipaddress.IPv6Network
Address = ipaddress.IPv4Address | ipaddress.IPv6Address


def parse_network(spec: str | Network, *, strict: bool = False) -> tuple[Network, bool]:
    """(network, host_bits_were_set) for a CIDR string; ValueError if it is not a network, or
    if strict and host bits are set.  The flag lets each caller say the correction its own way."""
    if isinstance(spec, (ipaddress.IPv4Network, ipaddress.IPv6Network)):
        return spec, False
    text = spec.strip()
    try:
        return ipaddress.ip_network(text), False
    except ValueError:
        if strict:
            raise
        return ipaddress.ip_network(text, strict=False), True     # still raises if not a network


def unmap_address(addr: Address) -> Address:
    """::ffff:a.b.c.d is the IPv4 address a.b.c.d; any other address is itself."""
    if isinstance(addr, ipaddress.IPv6Address) and addr.ipv4_mapped is not None:
        return addr.ipv4_mapped
    return addr


def unmap_network(net: Network) -> Network:
    """::ffff:10.0.0.0/104 is the IPv4 network 10.0.0.0/8; any other network is itself."""
    if (isinstance(net, ipaddress.IPv6Network) and net.prefixlen >= 96
            and net.network_address.ipv4_mapped is not None):
        return ipaddress.IPv4Network((net.network_address.ipv4_mapped, net.prefixlen - 96))
    return net


def network_contains(net: Network, addr: Address) -> bool:
    """addr in net, with mapped addresses and networks taken as the IPv4 ones they map."""
    net, addr = unmap_network(net), unmap_address(addr)
    return net.version == addr.version and addr in net


def parse_networks(specs: Iterable[str | Network] | None) -> list[Network]:
    """CIDR strings to networks for allow/deny lists.  Host bits set are accepted and the network
    meant is logged; IPv4-mapped IPv6 networks become the IPv4 networks they mean."""
    networks = []
    for spec in specs or ():
        net, corrected = parse_network(spec)
        if corrected:
            log.warning("CIDR %s has host bits set; using %s", spec, net)
        networks.append(unmap_network(net))
    return networks


def peer_allowed(host: str, allow: list[Network], deny: list[Network]) -> bool:
    """The recipe 11.4 test: deny wins, then an allow list (if any) must match.  The lists come
    from parse_networks (mapped networks already unmapped)."""
    try:
        ip = unmap_address(ipaddress.ip_address(host))
    except ValueError:
        return not allow            # not an IP peer (a Unix socket): only an allow list refuses
    if any(ip in net for net in deny if net.version == ip.version):
        return False
    return not allow or any(ip in net for net in allow if net.version == ip.version)
