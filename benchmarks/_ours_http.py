"""Our HTTP/1.1 handler without WSGI: the `ours-raw` server of `python -m benchmarks.http`.

    python -m benchmarks._ours_http --host 127.0.0.1 --port 0

Every request, whatever its method and target, gets `200 Hello, world!\\n` (text/plain), so what
is measured is the reactor and the HTTP core (parsing, keep-alive, pipelining, the response
head), not an application. Prints `listening http://HOST:PORT raw` once it accepts; SIGTERM and
SIGINT stop it gracefully (exit 0), as every app does.
"""
from __future__ import annotations

import sys

from apps import _cli
from protocols.handlers import HTTPServerHandler
from reactor import Reactor, listen_tcp

HELLO = b"Hello, world!\n"


class Hello(HTTPServerHandler):
    """The same small response for every request."""

    def request_received(self, request, body: bytes) -> None:
        # A fresh header list each time: respond() is free to extend the one it is given.
        self.respond(200, [(b"content-type", b"text/plain")], HELLO)


def main(argv: list[str] | None = None) -> int:
    """Serve Hello until SIGTERM or SIGINT."""
    parser = _cli.parser("HTTP/1.1 hello server without WSGI (benchmarks.http's ours-raw)", 0)
    args = parser.parse_args(argv)
    _cli.setup_logging(args.log_level)
    reactor = Reactor()
    listener = listen_tcp(reactor, args.host, args.port, Hello)
    return _cli.serve(reactor, [listener], args.grace, [("http", listener.address, "raw")])


if __name__ == "__main__":
    sys.exit(main())
