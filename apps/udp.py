"""UDP time server (recipe 11.3) and UDP echo server (recipe 11.12) on one reactor.

    python -m apps.udp --port 14000 --echo-port 15000      (--port 0 puts both on free ports)
"""
from __future__ import annotations

import sys
import time
from typing import Any

from reactor import DatagramHandler, Reactor, bind_udp

from . import _cli

DEFAULT_PORT, DEFAULT_ECHO_PORT = 14000, 15000


class UDPTimeServer(DatagramHandler):
    """Answer any datagram with time.ctime()."""

    def datagram_received(self, data: bytes, addr: Any) -> None:
        self.sendto(time.ctime().encode("ascii"), addr)


class UDPEchoServer(DatagramHandler):
    """Send every datagram back to where it came from."""

    def datagram_received(self, data: bytes, addr: Any) -> None:
        self.sendto(data, addr)


def build_parser():
    p = _cli.parser("UDP time and echo servers (Cookbook 11.3, 11.12)", DEFAULT_PORT)
    p.add_argument("--echo-port", type=int, default=None,
                   help=f"echo port (default {DEFAULT_ECHO_PORT}, or 0 when --port is 0)")
    return p


def mount(reactor: Reactor, args, ctx=None) -> _cli.Mounted:
    """Put both UDP servers on reactor (main() and apps.serve); UDP has no TLS (ctx unused)."""
    echo_port = args.echo_port if args.echo_port is not None else (0 if args.port == 0 else DEFAULT_ECHO_PORT)
    time_server = bind_udp(reactor, args.host, args.port, UDPTimeServer)
    echo_server = bind_udp(reactor, args.host, echo_port, UDPEchoServer)
    return _cli.Mounted([time_server, echo_server],
                        [("udp", time_server.address, "time"), ("udp", echo_server.address, "echo")])


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    _cli.setup_logging(args.log_level)
    reactor = Reactor()
    return _cli.run(reactor, mount(reactor, args), args.grace)


if __name__ == "__main__":
    sys.exit(main())
