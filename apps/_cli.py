"""What every service shares: flags, logging, the `listening` lines, and a graceful stop.

The contract (DESIGN.md): `--host`, `--port` (0 picks a free port), `--log-level`; one line
`listening <scheme>://<host>:<port> <service>` per endpoint on stdout, flushed, once it accepts;
SIGINT/SIGTERM stop accepting, let every connection flush what it has queued within `--grace`
seconds, close the rest, and exit 0.  Only apps print; everything else logs.
"""
from __future__ import annotations

import argparse
import logging
import signal
import sys
from typing import Any, Iterable

from reactor import Reactor
from reactor.listener import Listener

log = logging.getLogger("apps")


def parser(description: str, default_port: int) -> argparse.ArgumentParser:
    """The shared flags; services add their own."""
    p = argparse.ArgumentParser(description=description)
    p.add_argument("--host", default="127.0.0.1", help="address to bind (default 127.0.0.1)")
    p.add_argument("--port", type=int, default=default_port,
                   help=f"port to bind, 0 picks a free one (default {default_port})")
    p.add_argument("--log-level", default="WARNING",
                   choices=["DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL"])
    p.add_argument("--grace", type=float, default=3.0,
                   help="seconds to flush connections on SIGTERM/SIGINT (default 3)")
    return p


def add_cidr_flags(p: argparse.ArgumentParser) -> None:
    """--allow/--deny CIDR (repeatable) and --max-connections, for stream listeners."""
    p.add_argument("--allow", action="append", default=[], metavar="CIDR",
                   help="accept only peers in this network (repeatable)")
    p.add_argument("--deny", action="append", default=[], metavar="CIDR",
                   help="refuse peers in this network (repeatable; wins over --allow)")
    p.add_argument("--max-connections", type=int, default=None, metavar="N",
                   help="stop accepting at N open connections, resume below")


def setup_logging(level: str) -> None:
    logging.basicConfig(level=getattr(logging, level), stream=sys.stderr,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")


def endpoint_url(scheme: str, address: Any) -> str:
    """scheme://host:port for a bound address ([v6] in brackets)."""
    host, port = address[0], address[1]
    if ":" in host:
        host = f"[{host}]"
    return f"{scheme}://{host}:{port}"


def announce(scheme: str, address: Any, service: str) -> None:
    """Print the endpoint's `listening` line and flush it."""
    print(f"listening {endpoint_url(scheme, address)} {service}", flush=True)


def serve(reactor: Reactor, endpoints: Iterable[Any], grace: float = 3.0,
          announcements: Iterable[tuple[str, Any, str]] = ()) -> int:
    """Announce (scheme, address, service) endpoints and run until SIGINT/SIGTERM, then stop
    gracefully; returns the exit status (0).

    The stop handlers are installed before the first `listening` line: a supervisor may signal
    the moment it reads that line, and must find the graceful path already in place."""
    endpoints = list(endpoints)
    stopping = []

    def shutdown(signame: str) -> None:
        if stopping:
            return
        stopping.append(signame)
        log.info("%s: stopping (grace %.1f s)", signame, grace)
        connections = []
        for endpoint in endpoints:
            if isinstance(endpoint, Listener):
                connections.extend(endpoint.connections)
            endpoint.close()
        for conn in connections:
            conn.close()
        deadline = reactor.time() + grace

        def wait() -> None:
            if all(conn not in reactor.handlers for conn in connections) or reactor.time() >= deadline:
                reactor.stop()
            else:
                reactor.call_later(0.02, wait)
        wait()

    for sig in (signal.SIGINT, signal.SIGTERM):
        reactor.add_signal_handler(sig, shutdown, signal.Signals(sig).name)
    for scheme, address, service in announcements:
        announce(scheme, address, service)
    try:
        reactor.run()
    finally:
        reactor.close()          # aborts whatever did not finish within the grace period
    return 0
