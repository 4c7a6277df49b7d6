"""Recipe 11.8's RPC: the registry, both codecs, the restricted Unpickler, and the servers and
clients on the reactor, with the recipe's own client code as the oracle for the pickle wire."""
from __future__ import annotations

import datetime
import decimal
import io
import json
import pickle
import socket
import struct
from multiprocessing.connection import Client

import pytest

from protocols import rpc
from protocols.auth import client_authenticate
from protocols.mpconn import frame
from protocols.rpc import BadRequest, RPCHandler, RemoteError
from reactor import connect_tcp
from reactor.testing import recv_exactly

KEY = b"peekaboo"


def add(x, y):
    return x + y


def sub(x, y):
    return x - y


def fail(message):
    raise ZeroDivisionError(message)


class Custom(Exception):
    pass


def custom():
    raise Custom("mine")


@pytest.fixture
def handler():
    h = RPCHandler()
    for f in (add, sub, fail, custom):
        h.register_function(f)
    return h


# -- the recipe's client, as printed ----------------------------------------------------------------

class RecipeRPCProxy:
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


class Canary:
    """Unpickling this creates a file: the side effect that must never happen."""

    def __init__(self, path):
        self.path = str(path)

    def __reduce__(self):
        return (open, (self.path, "w"))


def canary_pickle(path) -> bytes:
    return pickle.dumps(Canary(path))


def test_canary_really_has_a_side_effect(tmp_path):
    path = tmp_path / "proof"
    pickle.loads(canary_pickle(path)).close()
    assert path.exists()


# -- registry ---------------------------------------------------------------------------------------

def test_calls_and_errors(handler):
    assert handler.handle_request(("add", (2, 3), {})) == (True, 5)
    assert handler.handle_request(["sub", [2], {"y": 3}]) == (True, -1)
    ok, exc = handler.handle_request(("fail", ("boom",), {}))
    assert not ok and isinstance(exc, ZeroDivisionError)


@pytest.mark.parametrize("name", ["nope", "add.__globals__", "__class__", "_functions",
                                  "register_function", "handle_request", "os.system", ""])
def test_unregistered_and_dotted_names_are_errors(handler, name):
    ok, exc = handler.handle_request((name, (), {}))
    assert not ok and isinstance(exc, NameError)


@pytest.mark.parametrize("name", ["a.b", "_private", "__init__", "with space", ""])
def test_such_names_cannot_be_registered(name):
    with pytest.raises(ValueError):
        RPCHandler().register_function(add, name)


@pytest.mark.parametrize("request_", [
    ("add", (1, 2)), "add", None, 42, ("add", (1, 2), {}, 4), (1, (), {}),
    ("add", "12", {}), ("add", (), []), ("add", (), {1: 2}),
])
def test_malformed_requests(handler, request_):
    with pytest.raises(BadRequest):
        handler.handle_request(request_)


# -- restricted unpickling ---------------------------------------------------------------------------

def test_restricted_loads_refuses_globals(tmp_path):
    with pytest.raises(pickle.UnpicklingError):
        rpc.restricted_loads(canary_pickle(tmp_path / "x"))
    assert not (tmp_path / "x").exists()
    with pytest.raises(pickle.UnpicklingError):
        rpc.restricted_loads(pickle.dumps(Custom("x")))


UTC = datetime.timezone.utc
PLAIN = [1, "s", b"b", (1, [2, {"3": 4.5}]), {1, 2}, frozenset({3}), bytearray(b"x"), 2 + 3j,
         None, True, -2**100, 1.5, "\u00e9" * 300, b"x" * 70_000, [], {}, (), [[[]]],
         decimal.Decimal("1.25"), slice(1, 2), datetime.date(2020, 1, 1),
         datetime.timedelta(3), {datetime.date(2020, 1, 1): "a date key", b"k": 1, None: 2},
         [datetime.datetime(2024, 1, 1, tzinfo=UTC)] * 3,        # timezone.utc, shared
         ["abc"] * 100, ((1, 2), (1, 2)), {"k": "v", "k2": "v"}, {2**61 - 2, -(2**61 - 2)}]


@pytest.mark.parametrize("protocol", [3, 4, 5])
@pytest.mark.parametrize("value", PLAIN, ids=lambda v: repr(v)[:40])
def test_restricted_loads_admits_plain_data(value, protocol):
    if protocol < 4 and isinstance(value, (set, frozenset)):
        # before protocol 4 a set is REDUCE(builtins.set, [...]): a global no longer allowed
        with pytest.raises(pickle.UnpicklingError, match="not allowed"):
            rpc.restricted_loads(pickle.dumps(value, protocol))
        return
    assert rpc.restricted_loads(pickle.dumps(value, protocol)) == value


@pytest.mark.parametrize("protocol", [0, 1, 2])
def test_old_protocols_pass_the_scan(protocol):
    value = ("add", (1, -2**40, 2.5, "s\u00e9", None, True, [1, {"k": (2, "s\u00e9")}]),
             {"k": [], "j": {}})
    assert rpc.restricted_loads(pickle.dumps(value, protocol)) == value
    assert rpc.pickle_decode_request(pickle.dumps(value, protocol)) == (value, False)


def test_the_recipe_requests_pass_the_scan():
    shared = (1, 2)                          # one constant object: pickled once, then a GET
    for request in [("add", (2, 3), {}), ("add", ([1], [2]), {}), ("sub", (), {"x": 1, "y": 2}),
                    ("add", (shared, shared), {}), ("add", ("a" * 10_000, "b"), {})]:
        for data in (pickle.dumps(request), pickle.dumps(pickle.dumps(request))):
            assert rpc.pickle_decode_request(data)[0] == request


def memo_dag(depth: int, leaf: bytes = b")") -> bytes:
    """Memoize t_0 = leaf, t_(i+1) = (t_i, t_i) (a tree of 2**depth leaves in 6 bytes a
    level) and leave the stack empty: GET depth fetches t_depth."""
    out = [b"\x80\x04(", leaf, b"\x94"]
    for i in range(depth):
        out.append(b"h%ch%c\x86\x94" % (i, i))
    out.append(b"1")                                        # POP_MARK
    return b"".join(out)


def dag(depth: int) -> bytes:
    """A pickle building t_depth, which hashing or comparing walks leaf by leaf; append STOP."""
    return memo_dag(depth) + b"h%c" % depth


def flood(keys, opener=b"\x8f(", closer=b"\x90.") -> bytes:
    """A set (or frozenset, dict) of the given ints as LONG1 opcodes."""
    longs = b"".join(b"\x8a" + bytes([n := (k.bit_length() + 8) // 8]) + k.to_bytes(n, "little",
                                                                                    signed=True)
                     for k in keys)
    return b"\x80\x04" + opener + longs + closer


P = 2**61 - 1


@pytest.mark.parametrize("data", [
    memo_dag(27) + b"\x8f(h\x1b\x90.",                    # the DAG hashed into a set
    dag(27) + b".",                                          # ... or for a caller to hash
    dag(20) + b"\x85.",
    b"\x80\x04]\x94(h\x00e.",                               # a list holding itself
    b"\x80\x04]\x94h\x00h\x00\x86.",                        # one list, two references
    b"\x80\x04}\x94h\x00\x85.",
    b"\x80\x04]2\x86.",                                    # DUP
    flood([i * P for i in range(1, 50)]),                    # ints that all hash to 0
    flood([i * P for i in range(1, 50)], b"(", b"\x91."),   # ... in a frozenset
    b"\x80\x04}(" + b"G" + bytes(8) + b"K\x01u.",            # a float dict key
    b"\x80\x04\x8f(K\x01\x85\x90.",                         # a tuple in a set
    b"\x80\x04Nr" + (1 << 22).to_bytes(4, "little") + b".",   # a memo index never memoized
    b"\x80\x04Np1000\n.",
    b"\x80\x04Nh\x00.",
    b"\x80\x04\x8e" + (1 << 40).to_bytes(8, "little") + b"xx.",  # lengths beyond the data
    b"\x80\x05\x96" + (1 << 40).to_bytes(8, "little") + b"xx.",
    b"\x80\x04\x8d" + (1 << 40).to_bytes(8, "little") + b"xx.",
    b"\x80\x04B" + (1 << 31).to_bytes(4, "little") + b"xx.",
    b"\x80\x04\x8c\x08builtins\x8c\tbytearray\x93J" + (64 << 20).to_bytes(4, "little") + b"\x85R.",
    b"\x80\x04\x8c\x08builtins\x8c\x07complex\x93\x8c\x051e999\x85R.",
    b"\x80\x04\x8c\x07decimal\x8c\x07Decimal\x93\x8a\x01\x05\x85R.",
    b"\x80\x04\x8c\tfractions\x8c\x08Fraction\x93\x8c\t1e2000000\x85R.",
    b"\x80\x04\x8c\x08builtins\x8c\x05range\x93J\xff\xff\xff\x7f\x85R.",
    b"\x80\x04\x8c\x08builtins\x8c\x03set\x93](K\x01e\x85R.",
    b"\x80\x04\x8c\x0bcollections\x8c\x0bOrderedDict\x93)R.",
    b"\x80\x04K\x01K\x02.", b"\x80\x04(K\x01.", b"\x80\x04K\x01", b"",
    # a length read across the end of a FRAME: the C Unpickler reads garbage (MemoryError)
    b"\x80\x05\x95\x03" + bytes(7) + b"\x96\x01" + bytes(7) + b"2.",
    b"\x80\x05\x95\x03" + bytes(7) + b"\x8e\x01" + bytes(7) + b"2.",
    b"\x80\x04\x95\x01" + bytes(7) + b"\x8c\x012.",
    b"\x80\x04\x95\xff" + bytes(7) + b"N.",                   # a frame past the end
    b"\x80\x04\x95\x0b" + bytes(7) + b"\x95\x01" + bytes(7) + b"N.",      # a frame in a frame
], ids=lambda d: repr(d)[:50])
def test_what_the_scan_refuses(data):
    with pytest.raises(pickle.UnpicklingError):
        rpc.restricted_loads(data)
    with pytest.raises(BadRequest):
        rpc.pickle_decode_request(data)


def test_frames_as_pickle_dumps_writes_them():
    """Frames of 64 KiB, and large bytes written between frames, as pickle.dumps does."""
    for value in [b"x" * 300_000, ["a" * 70_000, b"b" * 200_000, bytearray(100_000)],
                  list(range(50_000)), {"k%d" % i: "v" * 100 for i in range(3000)}]:
        for protocol in (4, 5):
            assert rpc.restricted_loads(pickle.dumps(value, protocol)) == value
    framed = b"\x80\x04\x95\x01" + bytes(7) + b"N\x95\x01" + bytes(7) + b"."   # two frames
    assert rpc.restricted_loads(framed) is None


def test_sharing_is_bounded_by_the_size_of_the_pickle():
    expected = ()
    for depth in range(9):                   # 2**8 leaves from 60 bytes: within the slack
        assert rpc.restricted_loads(dag(depth) + b".") == expected
        expected = (expected, expected)
    data = dag(12) + b"."
    with pytest.raises(pickle.UnpicklingError, match="expands"):
        rpc.check_pickle(data)
    rpc.check_pickle(data, expansion=1 << 20)                # the bound is the only objection


def test_set_keys_up_to_the_hash_modulus():
    keys = [P - 1, -(P - 1), 0, -1, 2**31]
    assert rpc.restricted_loads(flood(keys)) == set(keys)
    with pytest.raises(pickle.UnpicklingError, match="key"):
        rpc.restricted_loads(flood(keys + [P]))


def test_exceptions_only_where_allowed():
    data = pickle.dumps(ZeroDivisionError("x"))
    with pytest.raises(pickle.UnpicklingError):
        rpc.restricted_loads(data)
    assert isinstance(rpc.restricted_loads(data, rpc.SAFE_GLOBALS_WITH_EXCEPTIONS), ZeroDivisionError)


@pytest.mark.parametrize("protocol", range(0, pickle.HIGHEST_PROTOCOL + 1))
@pytest.mark.parametrize("size", [0, 1, 255, 256, 70000])
def test_bytes_pickle_fast_path_agrees_with_pickle(protocol, size):
    data = pickle.dumps(b"z" * size, protocol)
    fast = rpc.bytes_pickle_payload(data)
    assert fast is None or fast == pickle.loads(data)
    if protocol >= 3:
        assert fast == b"z" * size


@pytest.mark.parametrize("data", [
    pickle.dumps((b"x",)), pickle.dumps(b"x") + b".", pickle.dumps(b"x")[:-1], b"\x80\x04",
    b"\x80\x04C\xffab\x94.", pickle.dumps("text"), pickle.dumps(Canary("/nonexistent/x")),
])
def test_bytes_pickle_fast_path_declines_anything_else(data):
    assert rpc.bytes_pickle_payload(data) is None


def test_decode_request_both_styles():
    inner = ("add", (1, 2), {})
    assert rpc.pickle_decode_request(pickle.dumps(pickle.dumps(inner))) == (inner, True)
    assert rpc.pickle_decode_request(pickle.dumps(pickle.dumps(inner), 3)) == (inner, True)
    with pytest.raises(BadRequest):       # protocol 2 pickles bytes through _codecs.encode
        rpc.pickle_decode_request(pickle.dumps(pickle.dumps(inner), 2))
    assert rpc.pickle_decode_request(pickle.dumps(inner)) == (inner, False)


def test_decode_request_refuses_canary_in_either_layer(tmp_path):
    evil = canary_pickle(tmp_path / "x")
    for data in (evil, pickle.dumps(evil)):
        with pytest.raises(BadRequest):
            rpc.pickle_decode_request(data)
    assert not (tmp_path / "x").exists()


def test_answers_are_builtin_or_named():
    assert pickle.loads(pickle.loads(rpc.pickle_answer(True, 5, True))) == 5
    err = pickle.loads(rpc.pickle_answer(False, Custom("mine"), False))
    assert type(err) is RuntimeError and "Custom" in str(err)


# -- JSON codec -------------------------------------------------------------------------------------

def test_json_round_trip():
    assert rpc.json_decode_answer(rpc.json_answer(True, [1, "a", None])) == [1, "a", None]
    with pytest.raises(ZeroDivisionError, match="boom"):
        rpc.json_decode_answer(rpc.json_answer(False, ZeroDivisionError("boom")))
    with pytest.raises(RemoteError) as info:
        rpc.json_decode_answer(b'{"error": {"type": "Weird", "message": "m"}}')
    assert info.value.type_name == "Weird"
    with pytest.raises(TypeError):
        rpc.json_decode_answer(rpc.json_answer(True, {1, 2}))       # not JSON: a TypeError answer


def _strict(constant):
    raise ValueError(constant)


@pytest.mark.parametrize("value", [float("nan"), float("inf"), [1, {"x": -float("inf")}]])
def test_json_never_writes_nan_or_infinity(value):
    answer = rpc.json_answer(True, value)
    json.loads(answer, parse_constant=_strict)
    with pytest.raises(TypeError, match="not JSON serializable"):
        rpc.json_decode_answer(answer)
    with pytest.raises(ValueError):
        rpc.json_request("add", (value,), {})


@pytest.mark.parametrize("payload", [b'["add",[NaN,1],{}]', b'["add",[Infinity,1],{}]',
                                     b'["add",[-Infinity,1],{}]', b'{"result":NaN}'])
def test_json_never_reads_nan_or_infinity(payload):
    with pytest.raises(ValueError):
        rpc._json_loads(payload)
    assert rpc._json_loads(payload.replace(b"NaN", b"1").replace(b"Infinity", b"2")) is not None


def test_json_request_with_nan_is_an_error_answer(json_address):
    reply = frames_after_auth(json_address, frame(b'["add",[NaN,1],{}]'))
    n = struct.unpack("!i", reply[:4])[0]
    answer = json.loads(reply[4:4 + n], parse_constant=_strict)
    assert answer["error"]["type"] == "ValueError" and len(reply) == 4 + n
    with socket.create_connection(json_address, timeout=5) as sock:    # 1e999 + 1 is inf
        client_authenticate(sock, KEY)
        sock.sendall(frame(b'["add",[1e999,1],{}]'))
        (n,) = struct.unpack("!i", recv_exactly(sock, 4))
        answer = json.loads(recv_exactly(sock, n), parse_constant=_strict)
    assert answer["error"]["type"] == "TypeError"


# -- on the reactor: JSON behind HMAC ----------------------------------------------------------------

@pytest.fixture
def json_address(serve_in_thread, handler):
    return serve_in_thread(rpc.json_rpc_server(handler, KEY, auth_timeout=2.0))


@pytest.fixture
def pickle_address(serve_in_thread, handler):
    return serve_in_thread(rpc.pickle_rpc_server(handler, KEY, auth_timeout=2.0))


def test_json_blocking_proxy(json_address):
    with rpc.connect(json_address, KEY) as proxy:
        assert proxy.add(2, 3) == 5
        assert proxy.sub(x=10, y=4) == 6
        with pytest.raises(ZeroDivisionError, match="boom"):
            proxy.fail("boom")
        with pytest.raises(NameError):
            proxy.nope()
        with pytest.raises(TypeError):
            proxy.add(1)
        with pytest.raises(RuntimeError, match="Custom"):
            proxy.custom()
        assert proxy.add("a", "b") == "ab"                         # still usable after errors
        with pytest.raises(AttributeError):
            proxy._private


def test_json_wrong_key_is_closed(json_address):
    with pytest.raises((ConnectionError, OSError)):
        with rpc.connect(json_address, b"wrong") as proxy:
            proxy.add(1, 2)


def frames_after_auth(address, *payloads):
    with socket.create_connection(address, timeout=5) as sock:
        client_authenticate(sock, KEY)
        sock.sendall(b"".join(payloads))
        got = b""
        try:
            while data := sock.recv(65536):
                got += data
        except ConnectionResetError:          # a reset, not a close: the same verdict here
            pass
        return got


def test_json_bad_frames(json_address):
    reply = frames_after_auth(json_address, frame(b"not json"), frame(b'["add",[1,2],{}]'))
    n = struct.unpack("!i", reply[:4])[0]
    assert b'"error"' in reply[4:4 + n] and len(reply) == 4 + n    # answered, then closed
    assert frames_after_auth(json_address, struct.pack("!i", -3)) == b""
    assert frames_after_auth(json_address, struct.pack("!i", rpc.MAX_JSON_FRAME + 1)) == b""


def test_json_deep_nesting_is_an_error_answer(json_address):
    reply = frames_after_auth(json_address, frame(b"[" * 100000 + b"]" * 100000))
    assert b'"error"' in reply


def test_json_reactor_client(rt, json_address):
    results = []

    def on_connect(handler):
        for future in (handler.proxy.add(40, 2), handler.proxy.nope(), handler.call("sub", (1, 1))):
            future.add_done_callback(results.append)
    rt.call(connect_tcp, rt.reactor, *json_address, rpc.json_rpc_client(KEY), on_connect=on_connect)
    rt.wait_for(lambda: len(results) == 3)
    assert results[0].result() == 42
    assert isinstance(results[1].exception(), NameError)
    assert results[2].result() == 0


def test_reactor_client_futures_fail_when_the_server_refuses(rt, json_address):
    results = []
    rt.call(connect_tcp, rt.reactor, *json_address, rpc.json_rpc_client(b"wrong"),
            on_connect=lambda h: h.proxy.add(1, 2).add_done_callback(results.append))
    rt.wait_for(lambda: results)
    assert isinstance(results[0].exception(), ConnectionError)


def test_mutual_reactor_client_fails_its_calls_on_an_impostor(rt, serve_in_thread, handler):
    address = serve_in_thread(rpc.json_rpc_server(handler, b"impostor", mutual=True))
    results = []
    rt.call(connect_tcp, rt.reactor, *address, rpc.json_rpc_client(KEY, mutual=True),
            on_connect=lambda h: h.proxy.add(1, 2).add_done_callback(results.append))
    rt.wait_for(lambda: results)
    assert isinstance(results[0].exception(), Exception)
    assert not isinstance(results[0].exception(), NameError)


# -- on the reactor: pickle over multiprocessing.connection -------------------------------------------

def test_recipe_client_unchanged(pickle_address):
    conn = Client(pickle_address, authkey=KEY)
    proxy = RecipeRPCProxy(conn)
    assert proxy.add(2, 3) == 5
    assert proxy.sub(2, 3) == -1
    with pytest.raises(TypeError):
        proxy.sub([1, 2], 4)
    with pytest.raises(NameError):
        proxy.nope()
    with pytest.raises(NameError):
        getattr(proxy, "add.__globals__")()
    assert proxy.add([1], [2]) == [1, 2]
    conn.close()


def test_pickle_blocking_proxy(pickle_address):
    with rpc.connect(pickle_address, KEY, codec="pickle") as proxy:
        assert proxy.add(2, 3) == 5
        with pytest.raises(ZeroDivisionError):
            proxy.fail("x")


def test_pickle_canary_after_authentication_is_refused(pickle_address, tmp_path):
    """Even an authenticated client gets only the allow-list: the canary's global is refused,
    answered with an error, and the connection closed."""
    path = tmp_path / "after-auth"
    conn = Client(pickle_address, authkey=KEY)
    conn.send(pickle.dumps(Canary(path)))
    answer = pickle.loads(conn.recv())
    assert isinstance(answer, ValueError)
    with pytest.raises(EOFError):
        conn.recv()
    conn.close()
    conn = Client(pickle_address, authkey=KEY)        # plain (once pickled) too
    conn.send(Canary(path))
    assert isinstance(pickle.loads(conn.recv()), ValueError)
    conn.close()
    assert not path.exists()


def test_pickle_reactor_client(rt, pickle_address):
    results = []

    def on_connect(handler):
        handler.proxy.add(2, 3).add_done_callback(results.append)
        handler.proxy.fail("x").add_done_callback(results.append)
    rt.call(connect_tcp, rt.reactor, *pickle_address, rpc.pickle_rpc_client(KEY), on_connect=on_connect)
    rt.wait_for(lambda: len(results) == 2)
    assert results[0].result() == 5
    assert isinstance(results[1].exception(), ZeroDivisionError)


def test_pickle_server_needs_a_key(handler, serve_in_thread):
    with pytest.raises(ValueError):
        rpc.pickle_rpc_server(handler, b"")
    address = serve_in_thread(type("Keyless", (rpc.PickleRPCServerHandler,), {"rpc": handler}))
    try:
        with socket.create_connection(address, timeout=5) as sock:
            sock.sendall(frame(pickle.dumps(("add", (1, 2), {}))))
            assert sock.recv(100) == b""           # never an answer
    except (ConnectionResetError, BrokenPipeError):
        pass


def test_restricted_unpickler_is_an_unpickler():
    assert isinstance(rpc.RestrictedUnpickler(io.BytesIO(b"")), pickle.Unpickler)
