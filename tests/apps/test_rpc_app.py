"""apps.rpc as the user runs it: JSON behind recipe 11.9's HMAC challenge by default, the
recipe's own pickle client over multiprocessing.connection with --codec pickle."""
from __future__ import annotations

import hmac
import json
import pickle
import signal
import socket
import struct
from multiprocessing import AuthenticationError as StdAuthenticationError
from multiprocessing.connection import Client

import pytest

from protocols import rpc
from tests.apps import _proc
from tests.apps.test_mpecho import closed_soon, recv_frame, start_printing_key

KEY = "peekaboo"


# -- the recipe's client code (11.8, 11.9), as printed but for hmac's digest ----------------------------

class RPCProxy:
    def __init__(self, connection):
        self._connection = connection

    def __getattr__(self, name):
        def do_rpc(*args, **kwargs):
            self._connection.send(pickle.dumps((name, args, kwargs)))
            result = pickle.loads(self._connection.recv())
            if isinstance(result, Exception):
                raise result
            return result
        return do_rpc


def client_authenticate(connection, secret_key):
    message = connection.recv(32)
    hash = hmac.new(secret_key, message, 'sha256')
    digest = hash.digest()
    connection.send(digest)


class Canary:
    def __init__(self, path):
        self.path = str(path)

    def __reduce__(self):
        return (open, (self.path, "w"))


@pytest.fixture(scope="module")
def json_rpc():
    with _proc.running("rpc", "--authkey", KEY) as (proc, endpoints):
        yield endpoints[0].address


@pytest.fixture(scope="module")
def pickle_rpc():
    with _proc.running("rpc", "--authkey", KEY, "--codec", "pickle", "--auth-timeout", "2") as (proc, endpoints):
        yield endpoints[0].address


def test_recipe_pickle_client_unchanged(pickle_rpc):
    c = Client(pickle_rpc, authkey=KEY.encode())
    proxy = RPCProxy(c)
    assert proxy.add(2, 3) == 5
    assert proxy.sub(2, 3) == -1
    with pytest.raises(TypeError):
        proxy.sub([1, 2], 4)
    c.close()


def test_pickle_wrong_key(pickle_rpc):
    with pytest.raises(StdAuthenticationError):
        Client(pickle_rpc, authkey=b"wrong")


@pytest.mark.parametrize("name", ["mul", "add.__code__", "__class__", "_functions", "os.system"])
def test_pickle_unregistered_and_dotted_names(pickle_rpc, name):
    c = Client(pickle_rpc, authkey=KEY.encode())
    c.send(pickle.dumps((name, (1, 2), {})))      # what the recipe's do_rpc sends for `name`
    assert isinstance(pickle.loads(c.recv()), NameError)
    assert RPCProxy(c).add(1, 1) == 2                  # the connection stays usable
    c.close()


def test_pickle_before_authentication_never_unpickled(pickle_rpc, tmp_path):
    path = tmp_path / "unpickled"
    evil = pickle.dumps(pickle.dumps(Canary(path)))
    with socket.create_connection(pickle_rpc, timeout=5) as sock:
        recv_frame(sock)                                 # the challenge
        if len(evil) <= 256:
            sock.sendall(struct.pack("!i", len(evil)) + evil)
            assert recv_frame(sock) == b"#FAILURE#"
        else:
            sock.sendall(struct.pack("!i", len(evil)) + evil)
        assert closed_soon(sock, 3)
    c = Client(pickle_rpc, authkey=KEY.encode())          # after authentication: refused too
    c.send(pickle.dumps(Canary(path)))
    assert isinstance(pickle.loads(c.recv()), ValueError)
    c.close()
    assert not path.exists()


def test_json_blocking_proxy(json_rpc):
    with rpc.connect(json_rpc, KEY.encode()) as proxy:
        assert proxy.add(2, 3) == 5
        assert proxy.sub(10, y=3) == 7
        with pytest.raises(TypeError):
            proxy.add(1, "x")


@pytest.mark.parametrize("name", ["mul", "add.__globals__", "__init__", "_functions"])
def test_json_unregistered_and_dotted_names(json_rpc, name):
    with rpc.connect(json_rpc, KEY.encode()) as proxy:
        with pytest.raises(NameError):
            proxy._call(name, (1, 2), {})
        assert proxy.add(1, 2) == 3


def test_recipe_client_authenticate_then_json_frames(json_rpc):
    with socket.create_connection(json_rpc, timeout=5) as sock:
        client_authenticate(sock, KEY.encode())
        request = json.dumps(["add", [2, 3], {}]).encode()
        sock.sendall(struct.pack("!i", len(request)) + request)
        assert json.loads(recv_frame(sock)) == {"result": 5}


def test_json_wrong_key_closed_and_server_carries_on(json_rpc):
    with socket.create_connection(json_rpc, timeout=5) as sock:
        client_authenticate(sock, b"wrong")
        request = json.dumps(["add", [2, 3], {}]).encode()
        try:
            sock.sendall(struct.pack("!i", len(request)) + request)
        except OSError:
            pass
        assert closed_soon(sock, 3)
    with rpc.connect(json_rpc, KEY.encode()) as proxy:
        assert proxy.add(1, 1) == 2


def test_generated_key_for_rpc(monkeypatch):
    monkeypatch.delenv("REACTOR_AUTHKEY", raising=False)
    proc, keys, lines, address = start_printing_key("rpc", "--codec", "pickle")
    try:
        assert len(keys) == 1
        c = Client(address, authkey=bytes.fromhex(keys[0]))
        assert RPCProxy(c).add(20, 22) == 42
        c.close()
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.communicate(timeout=10)
    assert proc.returncode == 0
