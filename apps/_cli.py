"""What every service shares: flags, logging, the `listening` lines, and a graceful stop.

The contract (DESIGN.md): `--host`, `--port` (0 picks a free port), `--log-level`; one line
`listening <scheme>://<host>:<port> <service>` per endpoint on stdout, flushed, once it accepts;
SIGINT/SIGTERM stop accepting, let every connection flush what it has queued within `--grace`
seconds, close the rest, and exit 0.  Only apps print; everything else logs.
"""
from __future__ import annotations

import argparse
import dataclasses
import logging
import os
import secrets
import signal
import sys
from typing import Any, Callable, Iterable

from reactor import Reactor
from reactor.listener import Listener

log = logging.getLogger("apps")

AUTHKEY_ENV = "REACTOR_AUTHKEY"


@dataclasses.dataclass
class Mounted:
    """What one service put on a reactor: the endpoints a stop closes, their `listening` lines
    as (scheme, address, service), and what to run once the reactor has stopped (a journal to
    close).  Each app's mount() returns one, so that its main() and apps.serve share the code."""
    endpoints: list
    announcements: list[tuple[str, Any, str]]
    cleanups: list[Callable[[], None]] = dataclasses.field(default_factory=list)


def parser(description: str, default_port: int | None) -> argparse.ArgumentParser:
    """The shared flags; services add their own.  default_port None: each service's own."""
    p = argparse.ArgumentParser(description=description)
    p.add_argument("--host", default="127.0.0.1", help="address to bind (default 127.0.0.1)")
    p.add_argument("--port", type=int, default=default_port,
                   help="port to bind, 0 picks a free one (default "
                        f"{default_port if default_port is not None else 'each one its own'})")
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


def add_authkey_flags(p: argparse.ArgumentParser) -> None:
    """--authkey, --auth-timeout (shared by the services that authenticate)."""
    p.add_argument("--authkey", metavar="KEY",
                   help=f"shared secret (UTF-8); default ${AUTHKEY_ENV}, else a random key "
                        "printed as `authkey <hex>`")
    p.add_argument("--auth-timeout", type=float, default=10.0, metavar="S",
                   help="close clients not authenticated within S seconds (default 10)")


def resolve_authkey(args: argparse.Namespace) -> bytes:
    """The key from --authkey or the environment; else a fresh one, printed (flushed) once.
    Remembered on args, so services sharing one namespace share one key and one line."""
    key = getattr(args, "authkey_bytes", None)
    if key:
        return key
    text = args.authkey if args.authkey is not None else os.environ.get(AUTHKEY_ENV)
    if text:
        # The bytes the user typed: UTF-8 for any UTF-8 text, and for bytes that are not UTF-8
        # (argv and environ carry them as surrogate escapes) those bytes, not a traceback.
        key = os.fsencode(text)
    else:
        key = secrets.token_bytes(32)
        print(f"authkey {key.hex()}", flush=True)
    args.authkey_bytes = key
    return key


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


def run(reactor: Reactor, mounts: Mounted | Iterable[Mounted], grace: float = 3.0) -> int:
    """serve() what the mounts put on the reactor, then run their cleanups."""
    mounts = [mounts] if isinstance(mounts, Mounted) else list(mounts)
    try:
        return serve(reactor, [e for m in mounts for e in m.endpoints], grace,
                     [a for m in mounts for a in m.announcements])
    finally:
        for mount in mounts:
            for cleanup in mount.cleanups:
                cleanup()


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
