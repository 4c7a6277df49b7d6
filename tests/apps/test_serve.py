"""`python -m apps.serve`: every service on one reactor, as the README's main command runs it.
Each endpoint is reached with its own standard client, the generated key is printed once and
shared, and SIGTERM stops the lot with status 0."""
from __future__ import annotations

import array
import json
import pickle
import socket
import ssl
import struct
import time
import urllib.error
import urllib.request
import xmlrpc.client
from multiprocessing import AuthenticationError
from multiprocessing.connection import Client, answer_challenge, deliver_challenge
from pathlib import Path

import pytest

from apps.arrays import ArrayClient
from protocols.rpc import connect
from reactor.testing import recv_exactly

from . import _proc

CERTS = Path(__file__).resolve().parents[1] / "certs"
TLS_FLAGS = ("--tls-cert", str(CERTS / "server.pem"), "--tls-key", str(CERTS / "server.key"))
TIMEOUT = 10.0
# how a TLS server refuses a client certificate: TLS 1.3 finishes the client's handshake first, so
# the alert (or the close after it) surfaces at the client's next read, wrapped or not by urllib
REFUSED = (ssl.SSLError, ConnectionError, EOFError, urllib.error.URLError)
EXPECTED = {("tcp", "echo"), ("udp", "time"), ("udp", "echo"), ("http", "rest"),
            ("http", "kvstore"), ("tcp", "mpecho"), ("tcp", "rpc"), ("tcp", "arrays")}


@pytest.fixture
def serve():
    started = []

    def start(*args, count=len(EXPECTED)):
        proc, endpoints = _proc.start("serve", *args, count=count)
        started.append(proc)
        return proc, {(e.scheme, e.service): e for e in endpoints}
    yield start
    for proc in started:
        if proc.returncode is None:
            _proc.stop(proc, timeout=15)


def udp_ask(address, data: bytes) -> bytes:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.settimeout(TIMEOUT)
        s.sendto(data, address)
        return s.recv(2048)


def client_ctx(certificate: str | None = None) -> ssl.SSLContext:
    """Trusts the test CA; presents tests/certs/<certificate>.pem when given."""
    ctx = ssl.create_default_context(cafile=str(CERTS / "ca.pem"))
    if certificate:
        ctx.load_cert_chain(str(CERTS / f"{certificate}.pem"), str(CERTS / f"{certificate}.key"))
    return ctx


class TLSWire:
    """multiprocessing.connection's framing (`!i` length + payload) over an SSLSocket, with the
    send_bytes/recv_bytes that the stdlib's own answer_challenge/deliver_challenge call: the
    stdlib's Connection reads its fd with os.read, so it cannot ride TLS itself."""

    def __init__(self, tls: ssl.SSLSocket) -> None:
        self.tls = tls

    def send_bytes(self, data: bytes) -> None:
        self.tls.sendall(struct.pack("!i", len(data)) + data)

    def recv_bytes(self, maxlength: int | None = None) -> bytes:
        (n,) = struct.unpack("!i", recv_exactly(self.tls, 4, TIMEOUT))
        if n < 0 or (maxlength is not None and n > maxlength):
            raise OSError(f"bad message length {n}")
        return recv_exactly(self.tls, n, TIMEOUT)

    def send(self, obj) -> None:
        self.send_bytes(pickle.dumps(obj))

    def recv(self):
        return pickle.loads(self.recv_bytes())


def mp_client_over_tls(address, authkey: bytes, ctx: ssl.SSLContext) -> TLSWire:
    """What `multiprocessing.connection.Client(address, authkey=...)` does, over TLS: answer the
    server's challenge, then deliver ours (the stdlib functions, unchanged)."""
    raw = socket.create_connection(address, timeout=TIMEOUT)
    try:
        wire = TLSWire(ctx.wrap_socket(raw, server_hostname="localhost"))
    except BaseException:
        raw.close()
        raise
    try:
        answer_challenge(wire, authkey)
        deliver_challenge(wire, authkey)
    except BaseException:
        wire.tls.close()
        raise
    return wire


def test_every_service_answers_its_standard_client_and_sigterm_exits_0(serve):
    proc, eps = serve()
    assert set(eps) == EXPECTED
    assert proc.authkey is not None and len(proc.authkey) == 32
    assert sum(line.startswith("authkey ") for line in proc.stdout_lines) == 1

    with socket.create_connection(eps["tcp", "echo"].address, timeout=TIMEOUT) as s:
        s.sendall(b"hello\n")
        assert s.recv(100) == b"hello\n"
    assert udp_ask(eps["udp", "echo"].address, b"ping") == b"ping"
    assert time.ctime()[:10] in udp_ask(eps["udp", "time"].address, b"").decode()

    rest = eps["http", "rest"]
    with urllib.request.urlopen(f"http://127.0.0.1:{rest.port}/hello?name=serve",
                                timeout=TIMEOUT) as resp:
        assert b"Hello serve!" in resp.read()
    with urllib.request.urlopen(f"http://127.0.0.1:{rest.port}/localtime.json",
                                timeout=TIMEOUT) as resp:
        assert "year" in json.loads(resp.read())

    kv = eps["http", "kvstore"]
    with xmlrpc.client.ServerProxy(f"http://127.0.0.1:{kv.port}", allow_none=True) as proxy:
        proxy.set("foo", "bar")
        assert proxy.get("foo") == "bar" and proxy.keys() == ["foo"]

    with Client(eps["tcp", "mpecho"].address, authkey=proc.authkey) as c:
        c.send({"x": [1, 2, 3]})
        assert c.recv() == {"x": [1, 2, 3]}

    proxy = connect(eps["tcp", "rpc"].address, proc.authkey)
    try:
        assert proxy.add(2, 3) == 5 and proxy.sub(2, 3) == -1
    finally:
        proxy.close()

    client = ArrayClient(eps["tcp", "arrays"].address)
    try:
        client.put("a", array.array("d", [1.0, 2.5]))
        assert list(client.get("a")) == [1.0, 2.5]
    finally:
        client.close()

    assert _proc.stop(proc, timeout=15) == 0, proc.stderr_text
    assert "Traceback" not in proc.stderr_text, proc.stderr_text


def test_only_skip_and_the_key_from_the_command_line(serve):
    proc, eps = serve("--only", "echo,mpecho,rpc", "--skip", "rpc", "--authkey", "s3cret", count=2)
    assert set(eps) == {("tcp", "echo"), ("tcp", "mpecho")} and proc.authkey is None
    with Client(eps["tcp", "mpecho"].address, authkey=b"s3cret") as c:
        c.send("hi")
        assert c.recv() == "hi"


def test_tls_for_every_stream_service(serve):
    proc, eps = serve(*TLS_FLAGS, "--skip", "udp", count=6)
    assert {scheme for scheme, _ in eps} == {"tls", "https"}
    ctx = ssl.create_default_context(cafile=str(CERTS / "ca.pem"))
    with urllib.request.urlopen(f"https://localhost:{eps['https', 'rest'].port}/hello?name=t",
                                context=ctx, timeout=TIMEOUT) as resp:
        assert b"Hello t!" in resp.read()
    with socket.create_connection(eps["tls", "echo"].address, timeout=TIMEOUT) as raw:
        with ctx.wrap_socket(raw, server_hostname="localhost") as s:
            s.sendall(b"x")
            assert s.recv(10) == b"x"
    with xmlrpc.client.ServerProxy(f"https://localhost:{eps['https', 'kvstore'].port}",
                                   context=ctx) as p:
        p.set("k", 1)
        assert p.get("k") == 1
    proxy = connect(eps["tls", "rpc"].address, proc.authkey, ssl_context=ctx,
                    server_hostname="localhost")
    try:
        assert proxy.add(20, 22) == 42
    finally:
        proxy.close()
    with ArrayClient(eps["tls", "arrays"].address, ssl_context=ctx) as client:
        client.put("b", b"bytes")
        assert bytes(client.get("b")) == b"bytes"
    mpecho = eps["tls", "mpecho"].address
    with pytest.raises(AuthenticationError, match="digest sent was rejected"):
        mp_client_over_tls(mpecho, b"not the key", ctx)
    wire = mp_client_over_tls(mpecho, proc.authkey, ctx)      # the server carries on
    with wire.tls:
        assert wire.tls.version() == "TLSv1.3"
        wire.send({"over": ["tls", 1]})
        assert wire.recv() == {"over": ["tls", 1]}
    assert _proc.stop(proc, timeout=15) == 0, proc.stderr_text
    assert "Traceback" not in proc.stderr_text, proc.stderr_text


def test_tls_client_ca_requires_a_certificate_from_that_ca_on_every_endpoint(serve):
    proc, eps = serve(*TLS_FLAGS, "--tls-client-ca", str(CERTS / "ca.pem"),
                      "--only", "rest,mpecho,rpc", count=3)
    hello = f"https://localhost:{eps['https', 'rest'].port}/hello?name=mutual"
    mpecho, rpc = eps["tls", "mpecho"].address, eps["tls", "rpc"].address
    for certificate in (None, "other-client"):      # missing, and signed by another CA
        ctx = client_ctx(certificate)
        with pytest.raises(REFUSED):
            urllib.request.urlopen(hello, context=ctx, timeout=TIMEOUT).close()
        with pytest.raises(REFUSED):
            mp_client_over_tls(mpecho, proc.authkey, ctx).tls.close()
        with pytest.raises(REFUSED):
            connect(rpc, proc.authkey, ssl_context=ctx, server_hostname="localhost",
                    timeout=TIMEOUT).close()
    ctx = client_ctx("client")                      # the server carries on, and serves this one
    with urllib.request.urlopen(hello, context=ctx, timeout=TIMEOUT) as resp:
        assert resp.status == 200 and b"Hello mutual!" in resp.read()
    wire = mp_client_over_tls(mpecho, proc.authkey, ctx)
    with wire.tls:
        wire.send(["mutual", b"tls"])
        assert wire.recv() == ["mutual", b"tls"]
    proxy = connect(rpc, proc.authkey, ssl_context=ctx, server_hostname="localhost",
                    timeout=TIMEOUT)
    try:
        assert proxy.add(40, 2) == 42
    finally:
        proxy.close()
    assert _proc.stop(proc, timeout=15) == 0, proc.stderr_text
    assert "Traceback" not in proc.stderr_text, proc.stderr_text


def test_kvstore_data_survives_a_restart(serve, tmp_path):
    data = tmp_path / "kv.journal"
    for round_ in range(2):
        proc, eps = serve("--only", "kvstore", "--data", str(data), count=1)
        with xmlrpc.client.ServerProxy(f"http://127.0.0.1:{eps['http', 'kvstore'].port}") as p:
            if round_ == 0:
                p.set("k", "v")
            else:
                assert p.get("k") == "v"
        assert _proc.stop(proc, timeout=15) == 0


@pytest.mark.parametrize("args", [("--port", "8081"), ("--only", "nope"), ("--only", "echo", "--skip", "echo")])
def test_bad_flags_are_usage_errors(args):
    import subprocess
    import sys
    done = subprocess.run([sys.executable, "-m", "apps.serve", *args], cwd=_proc.REPO,
                          capture_output=True, timeout=30)
    assert done.returncode == 2 and b"usage:" in done.stderr
