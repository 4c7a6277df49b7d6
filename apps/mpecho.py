"""multiprocessing.connection echo (recipe 11.7), serving many clients at once.

    python -m apps.mpecho --port 25000 [--authkey KEY] [--no-md5] [--raw] [--auth-timeout S]

The stdlib's own `multiprocessing.connection.Client(address, authkey=...)` connects, and
`send(obj)` / `recv()` get the object back.  The key is --authkey's UTF-8 bytes, else the
environment variable REACTOR_AUTHKEY's; without either, 32 random bytes are generated and
printed once as `authkey <hex>` (a client uses `bytes.fromhex`) before the `listening` line.
Unlike the recipe's `Listener.accept()` loop, clients authenticate concurrently, each within its
own deadline, and nothing is unpickled before mutual authentication succeeded.  After it, a
client is trusted as the stdlib trusts it (its pickles are loaded as Connection.recv loads
them, up to --max-message bytes); with --raw the server never unpickles at all.
"""
from __future__ import annotations

import pickle
import struct
import sys

from protocols.mpconn import MAX_MESSAGE, MPConnectionHandler
from reactor import Reactor, listen_tcp

from . import _cli, _tls

DEFAULT_PORT = 25000
AUTHKEY_ENV = _cli.AUTHKEY_ENV
_dumps, _pack_i = pickle.dumps, struct.Struct("!i").pack


add_authkey_flags, resolve_authkey = _cli.add_authkey_flags, _cli.resolve_authkey   # shared


class EchoHandler(MPConnectionHandler):
    """The recipe's echo_client: every object back (unpickled and pickled again, as recv/send)."""

    def message_received(self, obj: object) -> None:
        self.send(obj)

    def bytes_received(self, data: bytes) -> None:
        # message_received -> send -> send_bytes, in one frame: this runs for every message.
        try:
            obj = self.loads(data)
        except Exception:
            super().bytes_received(data)         # logs and resets
            return
        payload = _dumps(obj, self.pickle_protocol)
        if len(payload) <= 16384:
            self.write(_pack_i(len(payload)) + payload)
        else:
            self.send_bytes(payload)


class RawEchoHandler(MPConnectionHandler):
    """Every frame back as it came: the same for the client, and never unpickled here."""

    def bytes_received(self, data: bytes) -> None:
        self.send_bytes(data)


def build_parser():
    p = _cli.parser("multiprocessing.connection echo server (Cookbook 11.7)", DEFAULT_PORT)
    add_authkey_flags(p)
    p.add_argument("--no-md5", action="store_true",
                   help="refuse the HMAC-MD5 handshake of Python <= 3.11 clients")
    p.add_argument("--max-message", type=int, default=MAX_MESSAGE, metavar="BYTES",
                   help=f"largest message after authentication (default {MAX_MESSAGE})")
    p.add_argument("--raw", action="store_true", help="echo frames without unpickling them")
    _cli.add_cidr_flags(p)
    _tls.add_tls_flags(p)
    return p


def mount(reactor: Reactor, args, ctx=None) -> _cli.Mounted:
    """Put the echo listener on reactor (main() and apps.serve); the key is resolved here (and
    printed if generated) unless args already carries one."""
    key = resolve_authkey(args)
    base = RawEchoHandler if args.raw else EchoHandler
    factory = type("MPEcho", (base,), {
        "authkey": key, "allow_legacy_md5": not args.no_md5, "auth_timeout": args.auth_timeout,
        "max_message": args.max_message})
    listener = listen_tcp(reactor, args.host, args.port, factory, ssl_context=ctx,
                          max_connections=args.max_connections, allow=args.allow, deny=args.deny)
    return _cli.Mounted([listener], [(_tls.scheme("tcp", ctx), listener.address, "mpecho")])


def main(argv: list[str] | None = None) -> int:
    p = build_parser()
    args = p.parse_args(argv)
    ctx = _tls.context_or_exit(p, args)
    _cli.setup_logging(args.log_level)
    reactor = Reactor()
    return _cli.run(reactor, mount(reactor, args, ctx), args.grace)


if __name__ == "__main__":
    sys.exit(main())
