"""https:// through the reactor's TLS layer: the client against the standard library's
ThreadingHTTPServer wrapped in TLS with the test certificates (tests/certs), verifying the
certificate and the host name by default."""
from __future__ import annotations

import contextlib
import http.server
import socket
import ssl
import threading
from pathlib import Path

import pytest

from protocols import client, client_conn
from protocols.client import ConnectError, HTTPClient, InsecureRedirect, Session, TLSUnavailable
import reactor.tls  # noqa: F401  (a plain import: a broken reactor/tls.py fails, never skips)
from reactor import Reactor
from reactor.testing import run_until

from .test_client import StdlibState, make_handler, stdlib_server

CERTS = Path(__file__).resolve().parents[1] / "certs"
CA = str(CERTS / "ca.pem")
TIMEOUT = 10.0


@contextlib.contextmanager
def https_server(cert: str = "server", host: str = "127.0.0.1"):
    """ThreadingHTTPServer speaking TLS with tests/certs/<cert>.pem; state.url is https://."""
    state = StdlibState()
    server = http.server.ThreadingHTTPServer((host, 0), make_handler(state))
    server.daemon_threads = True
    ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ctx.load_cert_chain(str(CERTS / f"{cert}.pem"), str(CERTS / f"{cert}.key"))
    server.socket = ctx.wrap_socket(server.socket, server_side=True)
    server.socket.settimeout(TIMEOUT)            # a handshake that stalls cannot hang the test
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
    thread.start()
    state.url = f"https://{host}:{server.server_address[1]}"
    try:
        yield state
    finally:
        server.shutdown()
        server.server_close()
        thread.join(TIMEOUT)


def test_https_with_the_test_ca_keeps_the_connection():
    with https_server() as server, Session(verify=CA) as s:
        r = s.get(server.url + "/echo?x=1")
        assert r.status_code == 200 and r.json()["path"] == "/echo?x=1" and r.url.startswith("https://")
        assert s.post(server.url + "/echo", json={"k": "v"}).json()["body"] == '{"k": "v"}'
        r = s.post(server.url + "/echo", files={"f": ("a.txt", b"y" * 100000)})
        assert "y" * 100000 + "\r\n--" in r.json()["body"]
        assert s.get(server.url + "/chunked").content == b"hello chunked world"
        assert server.connections == 1 and s.client.connections == 1


def test_https_by_host_name():
    with https_server() as server, Session(verify=CA) as s:
        url = server.url.replace("127.0.0.1", "localhost")
        assert s.get(url + "/echo").json()["headers"]["host"] == [url.split("//")[1]]


def test_certificate_verified_by_default():
    with https_server() as server:
        with pytest.raises(ConnectError, match="CERTIFICATE_VERIFY_FAILED"):
            client.get(server.url + "/echo")           # the system's CAs do not know ours


def test_untrusted_certificate_refused_unless_verify_is_off():
    with https_server("other-server") as server:
        with pytest.raises(ConnectError, match="certificate"):
            client.get(server.url + "/echo", verify=CA)
        assert client.get(server.url + "/echo", verify=False).status_code == 200


def test_host_name_checked():
    try:
        probe = socket.create_server(("127.0.0.2", 0))
    except OSError:
        pytest.skip("127.0.0.2 is not usable here")
    probe.close()
    with https_server(host="127.0.0.2") as server:        # the certificate names 127.0.0.1 only
        with pytest.raises(ConnectError, match="mismatch|doesn't match|not valid"):
            client.get(server.url + "/echo", verify=CA)


def test_https_to_http_redirect_refused_unless_allowed():
    with https_server() as secure, stdlib_server() as plain, Session(verify=CA) as s:
        target = plain.url + "/echo"
        with pytest.raises(InsecureRedirect):
            s.get(secure.url + "/redirect", params={"to": target})
        assert plain.requests == []
        r = s.get(secure.url + "/redirect", params={"to": target}, allow_https_downgrade=True)
        assert r.url == target and [h.url.split(":")[0] for h in r.history] == ["https"]


def test_concurrent_https_requests_on_one_reactor():
    with https_server() as server:
        reactor = Reactor()
        try:
            c = HTTPClient(reactor, verify=CA, max_per_host=8)
            futures = [c.get(server.url + f"/echo?i={i}") for i in range(30)]
            run_until(reactor, lambda: all(f.done() for f in futures), timeout=30)
            assert [f.result().json()["path"] for f in futures] == [f"/echo?i={i}" for i in range(30)]
            assert server.connections <= 8
            c.close()
        finally:
            reactor.close()


def test_without_the_tls_layer_https_is_a_clear_error(monkeypatch):
    monkeypatch.setattr(client_conn, "_tls_available", lambda: False)
    with pytest.raises(TLSUnavailable, match="TLS layer not available"):
        client.get("https://127.0.0.1:1/")


def test_tls_handshake_bounded_by_the_connect_timeout():
    with socket.create_server(("127.0.0.1", 0)) as silent:       # TCP accepts, TLS never answers
        with pytest.raises(client.ConnectTimeout):
            client.get(f"https://127.0.0.1:{silent.getsockname()[1]}/", verify=CA, timeout=(0.3, 5))


def test_plain_http_server_on_an_https_url():
    with stdlib_server() as plain:
        with pytest.raises(ConnectError):
            client.get(plain.url.replace("http://", "https://") + "/echo", verify=CA, timeout=5)
