# The TLS servers `python -m benchmarks.tls` compares, beside `python -m apps.echo --tls-cert ...`
# and `python -m apps.rest --tls-cert ...`, which it runs as they are:
#
#     python -m benchmarks._tls_peers asyncio-echo --host 127.0.0.1 --port 0 --cert C --key K
#     python -m benchmarks._tls_peers asyncio-http --host 127.0.0.1 --port 0 --cert C --key K
#     python -m benchmarks._tls_peers ours-http    --host 127.0.0.1 --port 0 --cert C --key K
#
# The asyncio peers are benchmarks._peers' own Protocols (the echo, and the HTTP/1.1 server with
# its minimal parser), served by `loop.create_server(..., ssl=context)`: asyncio's TLS transport
# (sslproto, memory BIOs, rewritten for 3.11) is what is measured, with no other change.
# `ours-http` is benchmarks._ours_http's handler (our HTTP/1.1 core, no WSGI) behind
# `listen_tcp(..., ssl_context=context)`. All three use the same context, built the way
# apps._tls builds it (TLS 1.2 floor, no renegotiation), print `listening tls://` or
# `listening https://`, and exit 0 on SIGTERM, as every app does.
"""TLS peers for the benchmarks: asyncio's TLS echo and HTTP, and our raw HTTP handler over TLS."""
import argparse
import asyncio
import logging
import signal
import ssl
import sys

from benchmarks._peers import BACKLOG, EchoProtocol, HTTPProtocol

log = logging.getLogger(__name__)


def server_context(cert: str, key: str | None) -> ssl.SSLContext:
    """The context every TLS server of the benchmark uses (as apps._tls makes it)."""
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.minimum_version = ssl.TLSVersion.TLSv1_2
    ctx.options |= ssl.OP_NO_RENEGOTIATION
    ctx.load_cert_chain(cert, key)
    return ctx


async def _serve_asyncio(protocol, scheme: str, service: str, host: str, port: int,
                         ctx: ssl.SSLContext, stop: asyncio.Event) -> None:
    loop = asyncio.get_running_loop()
    server = await loop.create_server(protocol, host, port, backlog=BACKLOG, ssl=ctx)
    bound_host, bound_port = server.sockets[0].getsockname()[:2]
    print(f"listening {scheme}://{bound_host}:{bound_port} {service}", flush=True)
    await stop.wait()
    server.close()


def run_asyncio(protocol, scheme: str, service: str, args: argparse.Namespace) -> int:
    """Serve protocol over TLS on asyncio's default loop until SIGTERM or SIGINT."""
    ctx = server_context(args.cert, args.key)
    loop = asyncio.new_event_loop()
    asyncio.set_event_loop(loop)
    stop = asyncio.Event()
    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, stop.set)
    try:
        loop.run_until_complete(_serve_asyncio(protocol, scheme, service, args.host, args.port,
                                               ctx, stop))
    finally:
        loop.close()
    return 0


def run_ours_http(args: argparse.Namespace) -> int:
    """benchmarks._ours_http's Hello handler over TLS on our reactor."""
    from apps import _cli
    from benchmarks._ours_http import Hello
    from reactor import Reactor, listen_tcp

    ctx = server_context(args.cert, args.key)
    reactor = Reactor()
    listener = listen_tcp(reactor, args.host, args.port, Hello, ssl_context=ctx)
    return _cli.serve(reactor, [listener], 3.0, [("https", listener.address, "raw")])


def main(argv: list[str] | None = None) -> int:
    """Run one TLS server until SIGTERM or SIGINT."""
    parser = argparse.ArgumentParser(prog="python -m benchmarks._tls_peers", description=__doc__)
    parser.add_argument("service", choices=["asyncio-echo", "asyncio-http", "ours-http"])
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=0)
    parser.add_argument("--cert", required=True, help="PEM certificate (chain)")
    parser.add_argument("--key", help="PEM private key, if not in --cert")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="%(name)s: %(message)s")
    if args.service == "asyncio-echo":
        return run_asyncio(EchoProtocol, "tls", "echo", args)
    if args.service == "asyncio-http":
        return run_asyncio(HTTPProtocol, "https", "http", args)
    return run_ours_http(args)


if __name__ == "__main__":
    sys.exit(main())
