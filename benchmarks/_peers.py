# Reference servers: the peers the benchmarks compare this reactor against.
#
# Each peer is the plainest idiomatic asyncio server for its job: a `Protocol` on the default
# event loop, no tuning beyond what a careful user would do, so that "ours / asyncio" measures the
# loop and not a handicapped opponent. Peers speak the same CLI contract as `apps.*`
# (`--host`, `--port 0`, one flushed `listening ...` line on stdout, exit 0 on SIGTERM), so the
# harness starts and stops both sides the same way. They run as their own process:
#     python -m benchmarks._peers echo --host 127.0.0.1 --port 0
#     python -m benchmarks._peers http --host 127.0.0.1 --port 0      (asyncio HTTP/1.1)
#     python -m benchmarks._peers http-core --host 127.0.0.1 --port 0 (asyncio + our HTTP core)
#     python -m benchmarks._peers wsgiref --host 127.0.0.1 --port 0   (Cookbook recipe 11.5)
#
# The HTTP peer is what a careful asyncio user writes without a framework: a Protocol with a
# minimal pure-Python parser (find the blank line, split the request line, Content-Length
# bodies, keep-alive and pipelining), answering with Content-Length, Date and Server headers as
# our handler does, one write per batch of pipelined requests. The wsgiref peer is the recipe's
# server as it stands (`wsgiref.simple_server.make_server`, its backlog of 5, HTTP/1.0, one
# request per connection, one thread), only with the per-request access log line silenced,
# because ours logs nothing per request either.
"""Reference servers for the benchmarks: asyncio echo and HTTP, and the recipe's wsgiref."""
import argparse
import asyncio
import email.utils
import logging
import signal
import sys
import time

log = logging.getLogger(__name__)

# asyncio's default backlog is 100: a storm of thousands of connects overflows it and the kernel
# retransmits the dropped SYNs a second later (DESIGN.md, "Performance"). The benchmarks open
# many connections, so the peer gets the same large backlog our listener uses, to be fair.
BACKLOG = 4096


class EchoProtocol(asyncio.Protocol):
    """Echo every byte back (asyncio's transport already sets TCP_NODELAY)."""

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport

    def data_received(self, data: bytes) -> None:
        self.transport.write(data)


HELLO = b"Hello, world!\n"
SERVER_NAME = b"asyncio-peer"
MAX_HEAD = 64 * 1024          # bytes of request line and headers before 431 and close
MAX_BODY = 1024 * 1024        # bytes of request body before 413 and close

_date_second, _date_value = 0, b""


def http_date() -> bytes:
    """The Date header's value, formatted once per second."""
    global _date_second, _date_value
    now = int(time.time())
    if now != _date_second:
        _date_second, _date_value = now, email.utils.formatdate(now, usegmt=True).encode()
    return _date_value


def _response(status: bytes, body: bytes, keep_alive: bool, http10: bool) -> bytes:
    connection = b""
    if not keep_alive:
        connection = b"connection: close\r\n"
    elif http10:
        connection = b"connection: keep-alive\r\n"
    return b"".join((b"HTTP/1.1 ", status, b"\r\ncontent-type: text/plain\r\ncontent-length: ",
                     str(len(body)).encode(), b"\r\ndate: ", http_date(), b"\r\nserver: ",
                     SERVER_NAME, b"\r\n", connection, b"\r\n", body))


class HTTPProtocol(asyncio.Protocol):
    """HTTP/1.1 keep-alive and pipelining with a minimal parser; every request gets HELLO."""

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport
        self.buffer = b""

    def data_received(self, data: bytes) -> None:
        buf = self.buffer + data if self.buffer else data
        out, pos, end = [], 0, len(buf)
        while pos < end:
            head_end = buf.find(b"\r\n\r\n", pos)
            if head_end < 0:
                if end - pos > MAX_HEAD:
                    return self._fail(out, b"431 Request Header Fields Too Large")
                break
            lines = buf[pos:head_end].split(b"\r\n")
            parts = lines[0].split(b" ")
            if len(parts) != 3 or not parts[2].startswith(b"HTTP/1."):
                return self._fail(out, b"400 Bad Request")
            http10 = parts[2] == b"HTTP/1.0"
            length, connection = 0, b""
            for line in lines[1:]:
                name, sep, value = line.partition(b":")
                if not sep:
                    return self._fail(out, b"400 Bad Request")
                name = name.strip().lower()
                if name == b"content-length":
                    try:
                        length = int(value)
                    except ValueError:
                        return self._fail(out, b"400 Bad Request")
                    if length < 0:
                        return self._fail(out, b"400 Bad Request")
                    if length > MAX_BODY:
                        return self._fail(out, b"413 Content Too Large")
                elif name == b"connection":
                    connection = value.strip().lower()
                elif name == b"transfer-encoding":
                    return self._fail(out, b"501 Not Implemented")
            body_end = head_end + 4 + length
            if body_end > end:
                break
            keep_alive = connection == b"keep-alive" if http10 else connection != b"close"
            out.append(_response(b"200 OK", HELLO, keep_alive, http10))
            pos = body_end
            if not keep_alive:
                self.transport.write(b"".join(out))
                self.transport.close()
                self.buffer = b""
                return
        self.buffer = buf[pos:]
        if out:
            self.transport.write(b"".join(out) if len(out) > 1 else out[0])

    def _fail(self, out: list, status: bytes) -> None:
        out.append(_response(status, status + b"\n", False, False))
        self.transport.write(b"".join(out))
        self.transport.close()
        self.buffer = b""


class CoreHTTPProtocol(asyncio.Protocol):
    """asyncio's loop driving this project's own HTTP/1.1 core (protocols.http), answering as
    benchmarks._ours_http does.  Against ours-raw it compares the two loops doing the same
    HTTP work; against `asyncio` it shows what the strict parser costs over a minimal one."""

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        from protocols.http import ServerConnection
        self.transport = transport
        self.conn = ServerConnection()

    def data_received(self, data: bytes) -> None:
        from protocols.base import RemoteProtocolError
        from protocols.http import DONE, EndOfMessage
        conn = self.conn
        out = []
        try:
            request = conn.receive_simple(data)
            events = [request, None] if request is not None else conn.receive_data(data)
            while events:
                if request is not None or type(events[-1]) is EndOfMessage:
                    out.append(conn.respond(200, [(b"content-type", b"text/plain")], HELLO, b"",
                                            b"date: %s\r\nserver: %s\r\n" % (http_date(), SERVER_NAME)))
                    if conn.our_state is not DONE:
                        break
                    request, events = None, conn.start_next_cycle()
                else:
                    break
        except RemoteProtocolError as exc:
            status = exc.error_status_hint
            out.append(_response(b"%d Error" % status, b"error\n", False, False))
            conn.keep_alive = False
        if out:
            self.transport.write(b"".join(out) if len(out) > 1 else out[0])
        if not conn.keep_alive:
            self.transport.close()


async def _serve(protocol, service: str, scheme: str, host: str, port: int,
                 stop: asyncio.Event) -> None:
    """Serve protocol until stop is set, printing the listening line once bound."""
    loop = asyncio.get_running_loop()
    server = await loop.create_server(protocol, host, port, backlog=BACKLOG)
    bound_host, bound_port = server.sockets[0].getsockname()[:2]
    print(f"listening {scheme}://{bound_host}:{bound_port} {service}", flush=True)
    await stop.wait()
    # Not `async with server`: since 3.12.1 wait_closed() waits for every client to leave.
    server.close()


def hello_app(environ, start_response):
    """The WSGI app the wsgiref peer serves: the same small body as every other server."""
    start_response("200 OK", [("Content-Type", "text/plain"),
                              ("Content-Length", str(len(HELLO)))])
    return [HELLO]


def _serve_wsgiref(host: str, port: int) -> int:
    """Recipe 11.5's server: make_server(...).serve_forever(), until SIGTERM or SIGINT."""
    from wsgiref.simple_server import WSGIRequestHandler, make_server

    class QuietHandler(WSGIRequestHandler):
        def log_message(self, format, *args):     # the recipe logs each request to stderr
            pass

    def stop(signum, frame):
        raise SystemExit(0)

    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGINT, stop)
    httpd = make_server(host, port, hello_app, handler_class=QuietHandler)
    try:
        bound_host, bound_port = httpd.server_address[:2]
        print(f"listening http://{bound_host}:{bound_port} wsgiref", flush=True)
        httpd.serve_forever()
    finally:
        httpd.server_close()
    return 0


def main(argv: list[str] | None = None) -> int:
    """Run one peer server until SIGTERM or SIGINT."""
    parser = argparse.ArgumentParser(prog="python -m benchmarks._peers", description=__doc__)
    parser.add_argument("service", choices=["echo", "http", "http-core", "wsgiref"])
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=0)
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="%(name)s: %(message)s")
    if args.service == "wsgiref":
        return _serve_wsgiref(args.host, args.port)
    protocol, scheme = {"echo": (EchoProtocol, "tcp"), "http": (HTTPProtocol, "http"),
                        "http-core": (CoreHTTPProtocol, "http")}[args.service]

    loop = asyncio.new_event_loop()
    asyncio.set_event_loop(loop)
    stop = asyncio.Event()
    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, stop.set)
    try:
        loop.run_until_complete(_serve(protocol, args.service, scheme, args.host, args.port, stop))
    finally:
        loop.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
