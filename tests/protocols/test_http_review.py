"""Regressions for the HTTP review's findings: each test failed on the code before its fix."""
from __future__ import annotations

import http.client
import io
import socket
import threading

import pytest

from protocols import wsgi as wsgi_module
from protocols.base import LocalProtocolError, RemoteProtocolError
from protocols.forms import parse_urlencoded, parse_body
from protocols.handlers import HTTPServerHandler
from protocols.http import (ClientConnection, Data, EndOfMessage, Request, Response,
                            ServerConnection)
from protocols.wsgi import wsgi_factory
from reactor import listen_tcp
from reactor.testing import run_until


def served(request: bytes) -> ServerConnection:
    conn = ServerConnection()
    events = conn.receive_data(request)
    assert type(events[0]) is Request
    return conn


GET = b"GET / HTTP/1.1\r\nHost: x\r\n\r\n"


@pytest.mark.parametrize("headers", [
    [(b"Content-Length", b"5")],
    [(b"CONTENT-LENGTH", b"5")],
])
def test_send_head_with_mixed_case_content_length_is_not_also_chunked(headers):
    conn = served(GET)
    head = conn.send(Response(200, headers))
    assert b"transfer-encoding" not in head.lower() and head.lower().count(b"content-length") == 1
    assert conn.send(Data(b"hello")) == b"hello"


@pytest.mark.parametrize("headers", [
    [(b"Content-Length", b"5"), (b"content-length", b"50")],
    [(b"Content-Length", b"5"), (b"Transfer-Encoding", b"chunked")],
])
def test_contradicting_framing_headers_are_refused(headers):
    with pytest.raises(LocalProtocolError):
        served(GET).send(Response(200, headers))


def test_an_applications_transfer_coding_is_replaced_by_the_framers():
    conn = served(GET)
    head = conn.send(Response(200, [(b"Transfer-Encoding", b"gzip")]))
    assert b"gzip" not in head and b"transfer-encoding: chunked" in head


def test_http10_client_is_never_sent_chunked():
    conn = served(b"GET / HTTP/1.0\r\n\r\n")
    head = conn.send(Response(200, [(b"Transfer-Encoding", b"chunked")]))
    assert b"chunked" not in head and b"connection: close" in head


@pytest.mark.parametrize("name", [b"Content-Length", b"Transfer-Encoding"])
def test_respond_refuses_framing_headers_in_any_case(name):
    with pytest.raises(LocalProtocolError):
        served(GET).respond(200, [(name, b"5")], b"hello")


def test_respond_honours_connection_close_in_any_case():
    conn = served(GET)
    out = conn.respond(200, [(b"CONNECTION", b"Close")], b"x")
    assert out.count(b"onnection") == 1 and b"connection: close" in out and not conn.keep_alive


def test_final_response_refuses_a_1xx_status():
    with pytest.raises(LocalProtocolError):
        served(GET).send(Response(100, [(b"content-length", b"0")]))


@pytest.mark.parametrize("te", [b"", b",", b"chunked,", b",chunked", b" , "])
def test_empty_transfer_encoding_elements_are_refused(te):
    with pytest.raises(RemoteProtocolError):
        ServerConnection().receive_data(b"POST / HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: " + te
                                        + b"\r\nContent-Length: 5\r\n\r\nhello")


@pytest.mark.parametrize("method,status", [(b"HEAD", 200), (b"GET", 304)])
def test_empty_head_or_304_response_sends_no_content_length(method, status):
    out = served(method + b" / HTTP/1.1\r\nHost: x\r\n\r\n").respond(status, [], b"")
    assert b"content-length" not in out


def test_client_refuses_a_bad_http_version():
    with pytest.raises(LocalProtocolError):
        ClientConnection().send(Request(b"GET", b"/", [(b"host", b"x")], b"1.1\r\nX: y"))


@pytest.mark.parametrize("charset", ["base64", "rot13", "zlib"])
def test_non_text_charsets_are_a_400_not_a_crash(charset):
    with pytest.raises(RemoteProtocolError) as info:
        parse_urlencoded(b"a=b", charset)
    assert info.value.error_status_hint == 400


# -- over loopback ---------------------------------------------------------------------------------

@pytest.mark.timeout(20)
def test_a_peer_that_stops_reading_is_reset_after_send_timeout(reactor):
    class Big(HTTPServerHandler):
        send_timeout = 0.2

        def request_received(self, request, body):
            self.respond(200, [], b"x" * (8 * 1024 * 1024))

    listener = listen_tcp(reactor, "127.0.0.1", 0, Big)
    client = socket.create_connection(listener.address)
    client.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    client.sendall(GET)
    run_until(reactor, lambda: listener.connections, timeout=5)
    run_until(reactor, lambda: not listener.connections, timeout=10)   # reset, not held forever
    client.close()


@pytest.mark.timeout(20)
def test_input_after_a_must_close_request_is_not_buffered(reactor):
    holders = []

    class Later(HTTPServerHandler):
        def request_received(self, request, body):
            holders.append(self)                 # answers later: the input keeps coming

    listener = listen_tcp(reactor, "127.0.0.1", 0, Later)
    client = socket.create_connection(listener.address)
    client.setblocking(False)
    client.sendall(b"GET / HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
    run_until(reactor, lambda: holders, timeout=5)
    pushed = 0
    for _ in range(200):
        try:
            pushed += client.send(b"y" * 65536)
        except BlockingIOError:
            reactor.run_once(0.01)
    handler = holders[0]
    assert not handler.is_reading and handler.conn.trailing_data <= 256 * 1024
    client.close()


@pytest.mark.parametrize("threads", [0, 2])
def test_app_returning_none_gets_a_500(serve_in_thread, threads):
    def app(environ, start_response):
        start_response("200 OK", [])
        return None

    address = serve_in_thread(wsgi_factory(app, threads=threads))
    conn = http.client.HTTPConnection(*address, timeout=5)
    conn.request("GET", "/")
    assert conn.getresponse().status == 500


@pytest.mark.parametrize("threads", [0, 2])
def test_a_1xx_status_from_the_app_is_a_500(serve_in_thread, threads):
    def app(environ, start_response):
        start_response("100 Continue", [("Content-Length", "0")])
        return []

    address = serve_in_thread(wsgi_factory(app, threads=threads))
    conn = http.client.HTTPConnection(*address, timeout=5)
    conn.request("GET", "/")
    assert conn.getresponse().status == 500


def test_threaded_failure_after_a_streamed_response_still_gets_a_500(serve_in_thread):
    def app(environ, start_response):
        if environ["PATH_INFO"] == "/fail":
            raise ValueError("boom")
        start_response("200 OK", [])
        return iter([b"a", b"b"])                 # two chunks: streamed, head sent

    address = serve_in_thread(wsgi_factory(app, threads=2))
    conn = http.client.HTTPConnection(*address, timeout=5)
    conn.request("GET", "/")
    assert conn.getresponse().read() == b"ab"
    conn.request("GET", "/fail")
    assert conn.getresponse().status == 500


def test_threaded_write_counts_against_the_body_limit(serve_in_thread, monkeypatch):
    monkeypatch.setattr(wsgi_module, "MAX_THREADED_BODY", 1000)

    def app(environ, start_response):
        write = start_response("200 OK", [])
        for _ in range(100):
            write(b"x" * 1000)
        return []

    address = serve_in_thread(wsgi_factory(app, threads=2))
    conn = http.client.HTTPConnection(*address, timeout=5)
    conn.request("GET", "/")
    assert conn.getresponse().status == 500
