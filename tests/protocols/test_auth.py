"""Recipe 11.9's HMAC challenge-response: the cores split at every position, the stage in front
of a real protocol on the reactor, the recipe's own client code, failures and deadlines."""
from __future__ import annotations

import hmac
import os
import select
import socket
import threading
import time

import pytest

from protocols import auth
from protocols.auth import (AuthenticationError, HMACChallenge, HMACResponse, client_authenticate,
                            server_authenticate, with_hmac_auth)
from protocols.handlers import LineHandler
from reactor import StreamHandler, connect_tcp
from reactor.testing import recv_exactly

KEY = b"peekaboo"
NONCE = bytes(range(32))
CLIENT_NONCE = bytes(range(100, 132))


# -- the recipe's client, as printed but for the digest (hmac.new needs one since 3.8) -------------

def recipe_client_authenticate(connection, secret_key):
    '''
    Authenticate client to a remote service.
    connection represents a network connection.
    secret_key is a key known only to both client/server.
    '''
    message = connection.recv(32)
    hash = hmac.new(secret_key, message, 'sha256')
    digest = hash.digest()
    connection.send(digest)


# -- cores ---------------------------------------------------------------------------------------------

def answer(key=KEY, nonce=NONCE):
    return hmac.new(key, nonce, "sha256").digest()


@pytest.mark.parametrize("cut", range(33 + 5))
def test_challenge_split_anywhere(cut):
    core = HMACChallenge(KEY, urandom=lambda n: NONCE)
    assert core.start() == NONCE
    wire = answer() + b"next!"
    done, rest = core.receive_data(wire[:cut])
    if done:
        rest += wire[cut:]                       # the protocol's, in the handler
    else:
        done, rest = core.receive_data(wire[cut:])
    assert done and rest == b"next!"


def test_wrong_answer_raises():
    core = HMACChallenge(KEY, urandom=lambda n: NONCE)
    core.start()
    with pytest.raises(AuthenticationError):
        core.receive_data(answer(b"other"))
    assert core.failed


@pytest.mark.parametrize("cut", range(0, 97, 3))
def test_mutual_cores_split_anywhere(cut):
    server = HMACChallenge(KEY, mutual=True, urandom=lambda n: NONCE)
    client = HMACResponse(KEY, mutual=True, urandom=lambda n: CLIENT_NONCE)
    challenge = server.start()
    done, _ = client.receive_data(challenge[:cut] if cut < 32 else challenge)
    if cut < 32:
        assert client.data_to_send() == b""
        done, _ = client.receive_data(challenge[cut:])
    assert not done
    reply = client.data_to_send()
    assert reply == answer() + CLIENT_NONCE
    wire = reply + b"payload"
    done, rest = server.receive_data(wire[:cut])
    if done:
        rest += wire[cut:]
    else:
        done, rest = server.receive_data(wire[cut:])
    assert done and rest == b"payload"
    proof = server.data_to_send()
    assert proof == hmac.new(KEY, b"server" + CLIENT_NONCE, "sha256").digest()
    done, rest = client.receive_data(proof + b"hi")
    assert done and rest == b"hi"


def test_mutual_client_refuses_a_wrong_proof():
    client = HMACResponse(KEY, mutual=True, urandom=lambda n: CLIENT_NONCE)
    client.receive_data(NONCE)
    with pytest.raises(AuthenticationError):
        client.receive_data(hmac.new(KEY, CLIENT_NONCE, "sha256").digest())   # no "server" prefix


def test_answer_is_never_the_server_proof():
    """A client's answer to nonce N differs from the server's proof for N: a client cannot be
    used as an oracle to impersonate a server."""
    client = HMACResponse(KEY)
    client.receive_data(CLIENT_NONCE)
    server = HMACChallenge(KEY, mutual=True, urandom=lambda n: NONCE)
    server.receive_data(answer() + CLIENT_NONCE)
    assert client.data_to_send() != server.data_to_send()


def test_key_must_be_bytes():
    with pytest.raises(ValueError):
        HMACChallenge(b"")
    with pytest.raises(ValueError):
        HMACResponse("text")          # type: ignore[arg-type]


def test_compare_digest_is_used(monkeypatch):
    calls = []
    real = hmac.compare_digest
    monkeypatch.setattr(hmac, "compare_digest", lambda a, b: calls.append(1) or real(a, b))
    core = HMACChallenge(KEY, urandom=lambda n: NONCE)
    core.receive_data(answer())
    assert calls == [1]


# -- on the reactor --------------------------------------------------------------------------------

class Echo(StreamHandler):
    def connection_made(self):
        self.write(b"hello\n")            # a banner: must not go out before authentication

    def data_received(self, data):
        self.write(data)


class Lines(LineHandler):
    def line_received(self, line):
        self.write(line.upper() + b"\n")


def connect(address):
    sock = socket.create_connection(address, timeout=5)
    return sock


def test_recipe_client_then_protocol(serve_in_thread):
    address = serve_in_thread(with_hmac_auth(Echo, KEY))
    with connect(address) as sock:
        recipe_client_authenticate(sock, KEY)
        assert recv_exactly(sock, 6) == b"hello\n"
        sock.sendall(b"Hello World")
        assert recv_exactly(sock, 11) == b"Hello World"


def test_bytes_sent_with_the_answer_reach_the_protocol(serve_in_thread):
    address = serve_in_thread(with_hmac_auth(Lines, KEY))
    with connect(address) as sock:
        nonce = recv_exactly(sock, 32)
        sock.sendall(answer(KEY, nonce) + b"one\ntwo\n")
        assert recv_exactly(sock, 8) == b"ONE\nTWO\n"


def test_wrong_key_is_closed_and_the_server_carries_on(serve_in_thread):
    address = serve_in_thread(with_hmac_auth(Echo, KEY))
    with connect(address) as bad:
        recipe_client_authenticate(bad, b"wrong key")
        assert bad.recv(100) == b""                 # closed, no banner
    with connect(address) as good:
        client_authenticate(good, KEY)
        assert recv_exactly(good, 6) == b"hello\n"


def test_mutual_blocking_client(serve_in_thread):
    address = serve_in_thread(with_hmac_auth(Echo, KEY, mutual=True))
    with connect(address) as sock:
        client_authenticate(sock, KEY, mutual=True)
        assert recv_exactly(sock, 6) == b"hello\n"


def test_mutual_blocking_client_refuses_an_impostor():
    with socket.create_server(("127.0.0.1", 0)) as server:
        def impostor():
            conn, _ = server.accept()
            with conn:
                conn.sendall(NONCE)
                recv_exactly(conn, 64)
                conn.sendall(os.urandom(32))
                conn.recv(1)
        thread = threading.Thread(target=impostor)
        thread.start()
        with connect(server.getsockname()) as sock:
            with pytest.raises(AuthenticationError):
                client_authenticate(sock, KEY, mutual=True)
        thread.join(5)


def test_client_authenticate_reads_a_dribbled_challenge():
    """The recipe's recv(32) would take the first byte for the whole challenge."""
    with socket.create_server(("127.0.0.1", 0)) as server:
        result = []

        def dribble():
            conn, _ = server.accept()
            with conn:
                conn.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
                for i in range(31):
                    conn.sendall(NONCE[i:i + 1])
                    # 2 ms between bytes, so the client sees them a few at a time; an answer
                    # before the whole challenge went out would be the recipe's bug
                    assert not select.select([conn], [], [], 0.002)[0]
                conn.sendall(NONCE[31:])
                result.append(recv_exactly(conn, 32))
        thread = threading.Thread(target=dribble)
        thread.start()
        with connect(server.getsockname()) as sock:
            client_authenticate(sock, KEY)
        thread.join(5)
    assert result == [answer()]


def test_blocking_server_authenticate_with_our_client():
    with socket.create_server(("127.0.0.1", 0)) as server:
        verdicts = []

        def serve():
            for _ in range(2):
                conn, _ = server.accept()
                with conn:
                    verdicts.append(server_authenticate(conn, KEY, mutual=True))
        thread = threading.Thread(target=serve)
        thread.start()
        with connect(server.getsockname()) as sock:
            client_authenticate(sock, KEY, mutual=True)
        with connect(server.getsockname()) as sock:
            with pytest.raises(AuthenticationError):
                client_authenticate(sock, b"bad", mutual=True)
        thread.join(5)
    assert verdicts == [True, False]


def test_silent_clients_time_out_while_others_are_served(serve_in_thread):
    address = serve_in_thread(with_hmac_auth(Echo, KEY, timeout=1.0))
    silent = [connect(address) for _ in range(10)]
    dribbler = connect(address)
    try:
        start = time.monotonic()
        with connect(address) as good:           # served at once, not after the silent ones
            client_authenticate(good, KEY)
            assert recv_exactly(good, 6) == b"hello\n"
        assert time.monotonic() - start < 0.9       # well before the silent ones' deadline
        for sock in silent:
            recv_exactly(sock, 32)               # the challenge, then nothing but the close
        recv_exactly(dribbler, 32)
        deadline = time.monotonic() + 5
        for byte in answer()[:30]:               # one byte every 50 ms: the deadline still holds
            try:
                dribbler.sendall(bytes([byte]))
            except OSError:
                break
            if select.select([dribbler], [], [], 0.05)[0]:
                break                            # the server closed it: the pace is moot
        for sock in silent + [dribbler]:
            sock.settimeout(max(0.1, deadline - time.monotonic()))
            try:
                assert sock.recv(1) == b""
            except ConnectionResetError:
                pass
        assert time.monotonic() - start < 4
    finally:
        for sock in silent + [dribbler]:
            sock.close()


def test_reactor_client_stage(rt, serve_in_thread):
    address = serve_in_thread(with_hmac_auth(Echo, KEY, mutual=True))

    class Client(StreamHandler):
        def __init__(self, sock, addr=None):
            super().__init__(sock, addr)
            self.got = bytearray()

        def connection_made(self):
            self.write(b"ping")

        def data_received(self, data):
            self.got += data

    cls = with_hmac_auth(Client, KEY, mutual=True, client=True)
    connector = rt.call(connect_tcp, rt.reactor, *address, cls)
    rt.wait_for(lambda: connector.handler is not None and bytes(connector.handler.got) == b"hello\nping")
    assert connector.handler.is_authenticated


def test_reactor_client_refuses_impostor_server(rt, serve_in_thread):
    address = serve_in_thread(with_hmac_auth(Echo, b"impostor key", mutual=True))
    lost = []

    class Client(StreamHandler):
        def connection_made(self):
            lost.append("made")

        def connection_lost(self, exc):
            lost.append("protocol lost")          # never: it was never made

    class Authenticating(with_hmac_auth(Client, KEY, mutual=True, client=True)):
        def auth_failed(self, exc):
            lost.append("lost")

    cls = Authenticating
    rt.call(connect_tcp, rt.reactor, *address, cls)
    rt.wait_for(lambda: "lost" in lost)
    assert lost == ["lost"]


def test_module_names_the_digest():
    assert auth.DIGEST == "sha256" and auth.NONCE_SIZE == 32
