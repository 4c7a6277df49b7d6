"""`--workers N` and `--reuse-port` for the stateless stream services (Cookbook 11.11).

An app keeps its own in-process path and adds one branch:

    if args.workers:
        return _workers.serve_workers(args, lambda: factory, "tcp", "echo")

make_factory runs in each worker after the fork, so a thread pool it builds (wsgi --threads)
belongs to that worker.  The parent prints the service's one `listening` line only once every
worker is ready, so a client that read it is served at once; SIGINT/SIGTERM stop the acceptor,
then every worker flushes within --grace, and the parent exits 0 once all are reaped.  A worker
that cannot start (its make_factory raised) makes the parent stop the others and exit 1.
"""
from __future__ import annotations

import argparse
import logging
import signal
import sys
from typing import Any, Callable

from reactor import Reactor
from reactor.workers import Factory, WorkerService

from . import _cli

log = logging.getLogger("apps")


def _count(text: str) -> int:
    value = int(text)
    if value < 0:
        raise argparse.ArgumentTypeError("must be 0 or more")
    return value


def add_worker_flags(p: argparse.ArgumentParser) -> None:
    """--workers N (0: serve in this process) and --reuse-port."""
    p.add_argument("--workers", type=_count, default=0, metavar="N",
                   help="serve connections in N worker processes; this one accepts and hands "
                        "each socket over (default 0: serve in this process)")
    p.add_argument("--reuse-port", action="store_true",
                   help="SO_REUSEPORT: with --workers each worker listens on the port itself and "
                        "the kernel balances; without, several servers may share the port")


def serve_workers(args: argparse.Namespace, make_factory: Callable[[], Factory], scheme: str,
                  service: str, *, ssl_context: Any = None) -> int:
    """Run the service on args.workers processes until SIGINT/SIGTERM; the exit status.

    Reads args.host, args.port, args.grace, args.workers, args.reuse_port and, when the app has
    them, args.allow, args.deny, args.max_connections."""
    reactor = Reactor()
    state: dict[str, Any] = {"service": None, "stopping": None, "failed": None}

    def shutdown(why: str) -> None:
        if state["stopping"]:
            return
        state["stopping"] = why
        log.info("%s: stopping %d workers (grace %.1f s)", why, args.workers, args.grace)
        if state["service"] is None:
            reactor.stop()
        else:
            state["service"].stop(reactor.stop)

    def ready() -> None:
        _cli.announce(scheme, state["service"].address, service)

    def failed(reason: str) -> None:
        state["failed"] = reason
        print(f"{service}: {reason}", file=sys.stderr, flush=True)
        reactor.call_soon(shutdown, "start-up failed")

    # Stop handlers first: a supervisor may signal while the workers are being forked.
    for sig in (signal.SIGINT, signal.SIGTERM):
        reactor.add_signal_handler(sig, shutdown, signal.Signals(sig).name)
    try:
        state["service"] = WorkerService(
            reactor, args.host, args.port, make_factory, workers=args.workers,
            reuse_port=args.reuse_port, grace=args.grace, ssl_context=ssl_context,
            allow=getattr(args, "allow", None), deny=getattr(args, "deny", None),
            max_connections=getattr(args, "max_connections", None),
            on_ready=ready, on_failure=failed)
        reactor.run()
    finally:
        reactor.close()
    return 1 if state["failed"] else 0
