"""TCP echo (recipes 11.2 and 11.12): every byte back, or line by line with --lines.

    python -m apps.echo --port 20000 [--lines] [--max-connections N] [--allow CIDR] [--deny CIDR]
                        [--tls-cert FILE --tls-key FILE [--tls-client-ca FILE]]
                        [--workers N [--reuse-port]]
"""
from __future__ import annotations

import sys

from protocols.handlers import LineHandler
from reactor import Reactor, StreamHandler, listen_tcp

from . import _cli, _tls, _workers

DEFAULT_PORT = 20000


class EchoHandler(StreamHandler):
    """Echo what arrives; a peer that does not read is not read from (water marks)."""

    def data_received(self, data: bytes) -> None:
        self.write(data)


class LineEchoHandler(LineHandler):
    """Echo line by line, as the recipe's StreamRequestHandler does (`for line in rfile`)."""

    keepends = True

    def line_received(self, line: bytes) -> None:
        self.write(line)


def build_parser():
    p = _cli.parser("TCP echo server (Cookbook 11.2, 11.12)", DEFAULT_PORT)
    p.add_argument("--lines", action="store_true", help="echo line by line")
    p.add_argument("--max-line", type=int, default=LineHandler.max_line,
                   help="longest line accepted with --lines; longer closes the connection")
    _cli.add_cidr_flags(p)
    _tls.add_tls_flags(p)
    _workers.add_worker_flags(p)
    return p


def make_factory(args):
    if args.lines:
        return type("LineEcho", (LineEchoHandler,), {"max_line": args.max_line})
    return EchoHandler


def mount(reactor: Reactor, args, ctx=None) -> _cli.Mounted:
    """Put the echo listener on reactor (main() and apps.serve)."""
    listener = listen_tcp(reactor, args.host, args.port, make_factory(args), ssl_context=ctx,
                          reuse_port=args.reuse_port, max_connections=args.max_connections,
                          allow=args.allow, deny=args.deny)
    return _cli.Mounted([listener], [(_tls.scheme("tcp", ctx), listener.address, "echo")])


def main(argv: list[str] | None = None) -> int:
    p = build_parser()
    args = p.parse_args(argv)
    ctx = _tls.context_or_exit(p, args)
    _cli.setup_logging(args.log_level)
    if args.workers:
        factory = make_factory(args)
        return _workers.serve_workers(args, lambda: factory, _tls.scheme("tcp", ctx), "echo",
                                      ssl_context=ctx)
    reactor = Reactor()
    return _cli.run(reactor, mount(reactor, args, ctx), args.grace)


if __name__ == "__main__":
    sys.exit(main())
