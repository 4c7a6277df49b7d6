"""CIDR tool (recipe 11.4): list, count or test the addresses of a network.

    python -m apps.cidr 123.45.67.89/27            # its 32 addresses, one a line
    python -m apps.cidr 2001:db8::/126 --hosts     # usable hosts only (as ipaddress.hosts())
    python -m apps.cidr 10.0.0.0/8 --count         # 16777216
    python -m apps.cidr 10.0.0.0/8 --contains ::ffff:10.1.2.3 && echo yes    # exit 0 / 1

The recipe's `ip_network('123.45.67.89/27')` raises ValueError (host bits set); here the network
meant (123.45.67.64/27) is used and named on stderr, and --strict refuses (exit 2).  The parsing
is reactor.networks', the same the listeners' --allow/--deny use, so this tool shows exactly
what a rule will match, IPv4-mapped addresses included.

A /8 has 16.7 million addresses and an IPv6 /64 2**64, so nothing is ever listed in memory:
addresses come lazily from integer ranges and are formatted a block at a time (a /24 for IPv4;
for IPv6, addresses that share their first seven groups), not one ipaddress object each: 16.7
million IPv6 addresses took 74 s that way and take under 1 s so.  A reader that stops early
(`| head`) ends the listing quietly with status 0: nothing failed, the reader had enough.
"""
from __future__ import annotations

import argparse
import ipaddress
import os
import sys
from typing import Iterator

from reactor.networks import Network, network_contains, parse_network, unmap_address, unmap_network

_OCTETS = [str(i) for i in range(256)]
_V6_BATCH = 4096


def address_range(net: Network, hosts: bool = False) -> range:
    """The network's addresses as integers; with hosts, those ipaddress's hosts() yields (no
    network or broadcast address in IPv4 above /31, no Subnet-Router anycast in IPv6 above
    /127).  A range is lazy and answers `in` at once, whatever the size."""
    first, last = int(net.network_address), int(net.broadcast_address)
    if hosts:
        if net.version == 4 and net.prefixlen < 31:
            first, last = first + 1, last - 1
        elif net.version == 6 and net.prefixlen < 127:
            first += 1
    return range(first, last + 1)


def lines(net: Network, hosts: bool = False) -> Iterator[str]:
    """The addresses, one a line, in chunks of many lines."""
    addresses = address_range(net, hosts)
    produce = _ipv4_lines if net.version == 4 else _ipv6_lines
    return produce(addresses.start, addresses.stop)


def _ipv4_lines(start: int, stop: int) -> Iterator[str]:
    pos = start
    while pos < stop:
        end = min(stop, (pos | 0xFF) + 1)                      # the end of this /24 block
        prefix = f"{pos >> 24}.{(pos >> 16) & 0xFF}.{(pos >> 8) & 0xFF}."
        yield prefix + ("\n" + prefix).join(_OCTETS[pos & 0xFF:((end - 1) & 0xFF) + 1]) + "\n"
        pos = end


def _ipv6_lines(start: int, stop: int) -> Iterator[str]:
    """Within a block of 65,536 addresses that differ in the last group only, every address
    whose last group is not 0 prints as one fixed prefix plus that group in hex: the zero run
    that `::` replaces lies in the fixed groups.  So str() is needed once per block, plus once
    for the address ending in 0, and in ::ffff:0:0/96, whose form differs across Python versions
    (3.13 writes the IPv4 part dotted)."""
    v6 = ipaddress.IPv6Address
    hexes = [f"{i:x}" for i in range(0x10000)]
    pos = start
    while pos < stop:
        end = min(stop, pos + _V6_BATCH, (pos | 0xFFFF) + 1)
        if pos >> 32 == 0xFFFF:
            yield "".join([f"{v6(i)}\n" for i in range(pos, end)])
        else:
            head = ""
            if not pos & 0xFFFF:
                head, pos = f"{v6(pos)}\n", pos + 1
            if pos < end:
                prefix = str(v6((pos & ~0xFFFF) | 1))[:-1]      # ends in "1"
                groups = hexes[pos & 0xFFFF:((end - 1) & 0xFFFF) + 1]
                head += prefix + ("\n" + prefix).join(groups) + "\n"
            yield head
        pos = end


def main(argv: list[str] | None = None) -> int:
    """Run the tool; the exit status is returned (0, 1 for --contains that fails, 2 usage)."""
    p = argparse.ArgumentParser(prog="python -m apps.cidr",
                                description="List, count or test the addresses of a CIDR network "
                                            "(Cookbook 11.4).")
    p.add_argument("network", help="e.g. 123.45.67.64/27 or 2001:db8::/120; host bits are "
                                   "cleared (with a note on stderr) unless --strict")
    p.add_argument("--strict", action="store_true",
                   help="refuse a network with host bits set (exit 2)")
    p.add_argument("--hosts", action="store_true", help="usable hosts only, as ipaddress.hosts()")
    what = p.add_mutually_exclusive_group()
    what.add_argument("--count", action="store_true", help="print how many addresses, not them")
    what.add_argument("--contains", metavar="ADDR",
                      help="exit 0 if ADDR is in the network (IPv4-mapped IPv6 addresses match "
                           "IPv4 networks), 1 if not")
    args = p.parse_args(argv)
    try:
        net, corrected = parse_network(args.network, strict=args.strict)
    except ValueError as exc:
        p.error(str(exc))
    if corrected:
        print(f"{p.prog}: {args.network} has host bits set; using the network {net}",
              file=sys.stderr, flush=True)
    if args.contains is not None:
        try:
            addr = ipaddress.ip_address(args.contains.strip())
        except ValueError as exc:
            p.error(str(exc))
        inside = network_contains(net, addr)
        if inside and args.hosts:
            inside = int(unmap_address(addr)) in address_range(unmap_network(net), hosts=True)
        print(f"{addr} {'is' if inside else 'is not'} in {net}{' (hosts)' if args.hosts else ''}")
        return 0 if inside else 1
    if args.count:
        addresses = address_range(net, args.hosts)
        print(addresses.stop - addresses.start)      # len() overflows past 2**63
        return 0
    return _write_all(lines(net, args.hosts))


def _write_all(chunks: Iterator[str]) -> int:
    out = sys.stdout
    try:
        for chunk in chunks:
            out.write(chunk)
        out.flush()
    except BrokenPipeError:
        # The reader left.  Point stdout at /dev/null so that the interpreter's own flush at
        # exit does not raise again (the recipe in the `signal` module's documentation).
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, out.fileno())
        os.close(devnull)
    except KeyboardInterrupt:
        return 130
    return 0


if __name__ == "__main__":
    sys.exit(main())
