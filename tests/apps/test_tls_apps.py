"""The stream services over TLS as a user runs them (`--tls-cert/--tls-key`, `--tls-client-ca`):
stdlib `ssl` clients, `urllib.request` and `xmlrpc.client` with the test CA, and `openssl s_client`
when installed (raw bytes, a hand-written GET, hand-written XML-RPC POSTs), against `apps.echo`
(`listening tls://`), `apps.rest`, `apps.wsgi` and `apps.kvstore` (`listening https://`).
Each service must also survive bad peers and stop with 0 and no traceback."""
from __future__ import annotations

import json
import os
import select
import shutil
import signal
import socket
import ssl
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

import pytest

from reactor.testing import recv_exactly

from . import _proc

CERTS = Path(__file__).resolve().parents[1] / "certs"
TLS_FLAGS = ("--tls-cert", str(CERTS / "server.pem"), "--tls-key", str(CERTS / "server.key"))
TIMEOUT = 10.0


def client_ctx(certificate: str | None = None, alpn: list[str] | None = None) -> ssl.SSLContext:
    ctx = ssl.create_default_context(cafile=str(CERTS / "ca.pem"))
    if certificate:
        ctx.load_cert_chain(str(CERTS / f"{certificate}.pem"), str(CERTS / f"{certificate}.key"))
    if alpn:
        ctx.set_alpn_protocols(alpn)
    return ctx


def tls_connect(address, ctx: ssl.SSLContext | None = None, hostname: str = "localhost") -> ssl.SSLSocket:
    raw = socket.create_connection(address, timeout=TIMEOUT)
    try:
        return (ctx or client_ctx()).wrap_socket(raw, server_hostname=hostname)
    except BaseException:
        raw.close()
        raise


@pytest.fixture
def service():
    """service(name, *args) starts an app; at the end each must exit 0 without a traceback."""
    started = []

    def start(name, *args):
        proc, endpoints = _proc.start(name, *args)
        started.append(proc)
        return proc, endpoints[0]
    yield start
    for proc in started:
        assert _proc.stop(proc) == 0, proc.stderr_text
        assert "Traceback" not in proc.stderr_text, proc.stderr_text


def test_echo_over_tls_with_stdlib_clients(service):
    _, endpoint = service("echo", *TLS_FLAGS)
    assert (endpoint.scheme, endpoint.service) == ("tls", "echo")
    with tls_connect(endpoint.address) as tls:
        assert tls.version() == "TLSv1.3"
        for size in (1, 1024, 256 * 1024):
            payload = os.urandom(size)
            tls.sendall(payload)
            assert recv_exactly(tls, size, TIMEOUT) == payload
    with tls_connect(endpoint.address, hostname="127.0.0.1") as tls:     # the IP is in the SAN
        tls.sendall(b"by address")
        assert recv_exactly(tls, 10, TIMEOUT) == b"by address"


def test_echo_lines_over_tls(service):
    _, endpoint = service("echo", "--lines", *TLS_FLAGS)
    with tls_connect(endpoint.address) as tls:
        tls.sendall(b"one\ntw")
        tls.sendall(b"o\n")
        assert recv_exactly(tls, 8, TIMEOUT) == b"one\ntwo\n"


needs_openssl = pytest.mark.skipif(shutil.which("openssl") is None,
                                   reason="openssl is not installed")


def s_client(endpoint, sent: bytes, until) -> bytes:
    """Run `openssl s_client -quiet` (verifying the test CA and the name localhost) against
    endpoint, write sent to it, and return what it printed once until(output) holds."""
    client = subprocess.Popen(
        ["openssl", "s_client", "-connect", f"{endpoint.host}:{endpoint.port}", "-quiet",
         "-CAfile", str(CERTS / "ca.pem"), "-servername", "localhost",
         "-verify_hostname", "localhost", "-verify_return_error"],
        stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    try:
        client.stdin.write(sent)
        client.stdin.flush()
        out, deadline = b"", time.monotonic() + TIMEOUT
        while not until(out):
            left = deadline - time.monotonic()
            assert left > 0, f"s_client got {out!r}"
            if select.select([client.stdout], [], [], left)[0]:
                chunk = os.read(client.stdout.fileno(), 4096)
                assert chunk, f"s_client ended after {out!r}: {client.stderr.read()!r}"
                out += chunk
        return out
    finally:
        client.kill()                    # the one process this call started
        client.communicate(timeout=TIMEOUT)


@needs_openssl
def test_echo_with_openssl_s_client(service):
    _, endpoint = service("echo", *TLS_FLAGS)
    s_client(endpoint, b"hello from s_client\n", lambda out: b"hello from s_client\n" in out)


def http_response_done(out: bytes) -> bool:
    """A whole response framed by Content-Length is in out."""
    head, sep, body = out.partition(b"\r\n\r\n")
    if not sep:
        return False
    length = [line.split(b":", 1)[1] for line in head.split(b"\r\n")[1:]
              if line.lower().startswith(b"content-length:")]
    return bool(length) and len(body) >= int(length[0])


@needs_openssl
def test_rest_with_openssl_s_client(service):
    _, endpoint = service("rest", *TLS_FLAGS)
    out = s_client(endpoint, b"GET /hello?name=s_client HTTP/1.1\r\nHost: localhost\r\n\r\n",
                   http_response_done)
    assert out.startswith(b"HTTP/1.1 200 ") and b"<h1>Hello s_client!</h1>" in out


@needs_openssl
def test_kvstore_with_openssl_s_client(service):
    import xmlrpc.client

    def call(method: str, *strings: str) -> bytes:
        params = "".join(f"<param><value><string>{s}</string></value></param>" for s in strings)
        body = (f'<?xml version="1.0"?><methodCall><methodName>{method}</methodName>'
                f"<params>{params}</params></methodCall>").encode()
        return (b"POST /RPC2 HTTP/1.1\r\nHost: localhost\r\nContent-Type: text/xml\r\n"
                b"Content-Length: %d\r\n\r\n%s" % (len(body), body))

    def two_responses(out: bytes) -> bool:
        first, sep, rest = out.partition(b"</methodResponse>")
        return bool(sep) and b"</methodResponse>" in rest and http_response_done(rest.lstrip())

    _, endpoint = service("kvstore", *TLS_FLAGS)
    out = s_client(endpoint, call("set", "door", "open") + call("get", "door"), two_responses)
    set_reply, get_reply = out.split(b"HTTP/1.1 ")[1:]        # two on one kept-alive connection
    assert set_reply.startswith(b"200 ") and get_reply.startswith(b"200 ")
    assert xmlrpc.client.loads(get_reply.split(b"\r\n\r\n", 1)[1])[0] == ("open",)


def test_bad_peers_do_not_stop_the_tls_echo(service):
    _, endpoint = service("echo", *TLS_FLAGS)
    silent = socket.create_connection(endpoint.address, timeout=TIMEOUT)   # never says a word
    try:
        for garbage in (b"GET / HTTP/1.1\r\nHost: x\r\n\r\n", os.urandom(2048)):
            with socket.create_connection(endpoint.address, timeout=TIMEOUT) as raw:
                raw.sendall(garbage)
                try:
                    while raw.recv(4096):            # perhaps an alert, then the close
                        pass
                except ConnectionResetError:
                    pass
        with pytest.raises(ssl.SSLCertVerificationError):
            tls_connect(endpoint.address, hostname="wrong.example")
        with tls_connect(endpoint.address) as tls:   # others are served meanwhile
            tls.sendall(b"still serving")
            assert recv_exactly(tls, 13, TIMEOUT) == b"still serving"
    finally:
        silent.close()


def test_echo_requires_client_certificates(service):
    _, endpoint = service("echo", *TLS_FLAGS, "--tls-client-ca", str(CERTS / "ca.pem"))
    with tls_connect(endpoint.address, client_ctx("client")) as tls:
        tls.sendall(b"mutual")
        assert recv_exactly(tls, 6, TIMEOUT) == b"mutual"
    for certificate in (None, "other-client"):
        with pytest.raises((ssl.SSLError, ConnectionResetError, BrokenPipeError, EOFError)):
            with tls_connect(endpoint.address, client_ctx(certificate)) as tls:
                tls.sendall(b"let me in")        # TLS 1.3: refused at the first read
                recv_exactly(tls, 9, TIMEOUT)


def test_sigterm_closes_tls_connections_with_close_notify(service):
    proc, endpoint = service("echo", *TLS_FLAGS)
    with tls_connect(endpoint.address) as tls:
        tls.sendall(b"x")
        assert recv_exactly(tls, 1, TIMEOUT) == b"x"
        proc.send_signal(signal.SIGTERM)
        assert tls.recv(1) == b""                 # close_notify, not a reset or a truncation
    assert _proc.stop(proc, None) == 0


def test_rest_over_https_with_urllib(service):
    _, endpoint = service("rest", *TLS_FLAGS)
    assert (endpoint.scheme, endpoint.service) == ("https", "rest")
    ctx = client_ctx()
    base = f"https://localhost:{endpoint.port}"
    with urllib.request.urlopen(f"{base}/hello?name=TLS", context=ctx, timeout=TIMEOUT) as resp:
        assert resp.status == 200 and b"<h1>Hello TLS!</h1>" in resp.read()
    with urllib.request.urlopen(f"{base}/get?a=1", context=ctx, timeout=TIMEOUT) as resp:
        body = json.loads(resp.read())
    assert body["url"] == f"{base}/get?a=1" and body["args"] == {"a": "1"}
    with urllib.request.urlopen(f"{base}/localtime.json", context=ctx, timeout=TIMEOUT) as resp:
        assert set(json.loads(resp.read())) == {"year", "month", "day", "hour", "minute", "second"}
    with tls_connect(endpoint.address, client_ctx(alpn=["h2", "http/1.1"])) as tls:
        assert tls.selected_alpn_protocol() == "http/1.1"
        for _ in range(3):                        # keep-alive over one TLS connection
            tls.sendall(b"GET /hello?name=ka HTTP/1.1\r\nHost: localhost\r\n\r\n")
            head = b""
            while b"\r\n\r\n" not in head:
                head += tls.recv(4096)
            assert head.startswith(b"HTTP/1.1 200")
            length = int(head.split(b"content-length: ", 1)[1].split(b"\r\n", 1)[0])
            body = head.split(b"\r\n\r\n", 1)[1]
            body += recv_exactly(tls, length - len(body), TIMEOUT)
            assert b"Hello ka!" in body
    with pytest.raises(urllib.error.URLError, match="CERTIFICATE_VERIFY_FAILED"):
        urllib.request.urlopen(f"{base}/hello", context=ssl.create_default_context(
            cafile=str(CERTS / "other-ca.pem")), timeout=TIMEOUT)


def test_rest_answers_pipelined_requests_over_tls_in_order(service):
    _, endpoint = service("rest", *TLS_FLAGS)
    count = 300                                   # past the handler's pipelining backlog
    requests = b"".join(b"GET /hello?name=n%d HTTP/1.1\r\nHost: localhost\r\n\r\n" % i
                        for i in range(count))
    with tls_connect(endpoint.address) as tls:
        tls.sendall(requests)
        data, deadline = b"", time.monotonic() + TIMEOUT
        while data.count(b"</html>") < count:
            assert time.monotonic() < deadline, f"{data.count(b'</html>')} of {count} answers"
            chunk = tls.recv(1 << 16)
            assert chunk, "closed early"
            data += chunk
    names = [int(part.split(b"!", 1)[0]) for part in data.split(b"<h1>Hello n")[1:]]
    assert names == list(range(count))


def test_wsgi_over_https(service):
    _, endpoint = service("wsgi", "tests.apps.sample_wsgi:app", *TLS_FLAGS)
    assert (endpoint.scheme, endpoint.service) == ("https", "wsgi")
    url = f"https://127.0.0.1:{endpoint.port}/some/path?q=1"
    with urllib.request.urlopen(url, context=client_ctx(), timeout=TIMEOUT) as resp:
        body = json.loads(resp.read())
    assert (body["path"], body["query"]) == ("/some/path", "q=1")


def test_kvstore_over_https_with_stdlib_server_proxy(service):
    import xmlrpc.client
    _, endpoint = service("kvstore", *TLS_FLAGS)
    assert (endpoint.scheme, endpoint.service) == ("https", "kvstore")
    url = f"https://localhost:{endpoint.port}"
    with xmlrpc.client.ServerProxy(url, allow_none=True, context=client_ctx()) as proxy:
        proxy.set("foo", [1, 2, 3])
        assert proxy.get("foo") == [1, 2, 3] and proxy.exists("foo") and proxy.keys() == ["foo"]
        with pytest.raises(xmlrpc.client.Fault):
            proxy.get("missing")
    untrusted = ssl.create_default_context(cafile=str(CERTS / "other-ca.pem"))
    with pytest.raises(ssl.SSLCertVerificationError):
        xmlrpc.client.ServerProxy(url, context=untrusted).keys()


def test_multiprocessing_connection_protocol_runs_over_tls_on_one_reactor():
    """mpconn's handlers (with their own authkey handshake) under TLS on both sides: what
    `apps.mpecho --tls-cert` and an mpecho client over TLS will be once wired."""
    from protocols.mpconn import MPClientHandler, MPConnectionHandler
    from reactor import Reactor, connect_tcp, listen_tcp
    from reactor.testing import run_until

    key = b"secret key"

    class Echo(MPConnectionHandler):
        authkey = key

        def message_received(self, obj):
            self.send(obj)

    class Client(MPClientHandler):
        authkey = key
        replies: list = []

        def authenticated(self):
            self.send({"over": "tls"})

        def message_received(self, obj):
            self.replies.append(obj)

    server_ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    server_ctx.load_cert_chain(str(CERTS / "server.pem"), str(CERTS / "server.key"))
    reactor = Reactor()
    try:
        listener = listen_tcp(reactor, "127.0.0.1", 0, Echo, ssl_context=server_ctx)
        connect_tcp(reactor, "127.0.0.1", listener.address[1], Client, ssl_context=client_ctx(),
                    server_hostname="localhost")
        run_until(reactor, lambda: Client.replies, timeout=TIMEOUT)
        assert Client.replies == [{"over": "tls"}]
    finally:
        reactor.close()


@pytest.mark.parametrize("flags, message", [
    (("--tls-key", str(CERTS / "server.key")), "need --tls-cert"),
    (("--tls-cert", str(CERTS / "missing.pem")), "cannot load --tls-cert"),
    (("--tls-cert", str(CERTS / "server.pem"), "--tls-key", str(CERTS / "client.key")),
     "cannot load --tls-cert"),
])
def test_bad_tls_flags_are_usage_errors(flags, message):
    done = subprocess.run([sys.executable, "-m", "apps.echo", "--port", "0", *flags],
                          cwd=_proc.REPO, capture_output=True, text=True, timeout=TIMEOUT)
    assert done.returncode == 2 and message in done.stderr, done.stderr
    assert done.stdout == ""
