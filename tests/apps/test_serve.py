"""`python -m apps.serve`: every service on one reactor, as the README's main command runs it.
Each endpoint is reached with its own standard client, the generated key is printed once and
shared, and SIGTERM stops the lot with status 0."""
from __future__ import annotations

import array
import json
import socket
import ssl
import time
import urllib.request
import xmlrpc.client
from multiprocessing.connection import Client
from pathlib import Path

import pytest

from apps.arrays import ArrayClient
from protocols.rpc import connect

from . import _proc

CERTS = Path(__file__).resolve().parents[1] / "certs"
TIMEOUT = 10.0
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
    proc, eps = serve("--tls-cert", str(CERTS / "server.pem"), "--tls-key", str(CERTS / "server.key"),
                      "--skip", "udp", count=6)
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
