"""Recipe 11.8's RPC: `RPCHandler` dispatches (name, args, kwargs) calls to registered
functions and answers with the result or the exception raised, over one of two wires.

Why it has this shape
---------------------
* JSON (the default): after the HMAC challenge of recipe 11.9 (protocols.auth), each request is
  a length-prefixed frame (the `!i` header of multiprocessing.connection) holding the JSON array
  `[name, args, kwargs]`; each answer is a frame holding `{"result": value}` or
  `{"error": {"type": "TypeError", "message": "..."}}`.  JSON can build nothing but data, so it
  is safe for anyone who passed authentication.
* pickle: the recipe's own wire, multiprocessing.connection with its authkey handshake, so the
  recipe's client (`Client(address, authkey=...)` + an RPCProxy that sends
  `pickle.dumps((name, args, kwargs))`, which Connection.send pickles once more) works unchanged.
  Pickle can run code, so it is read only after mutual authentication, and then by an
  Unpickler whose find_class admits an allow-list of harmless types (the "Restricting Globals"
  recipe of the pickle docs): a `__reduce__` naming os.system fails before anything is called.

Only registered names dispatch: the registry is a dict, never getattr on an object, and names
that are dotted or start with an underscore cannot be registered.  An unknown name is answered
with NameError.  Functions run on the reactor thread, so they must not block.
"""
from __future__ import annotations

import builtins
import collections
import concurrent.futures
import io
import json
import logging
import pickle
import socket
from typing import Any, Callable, Iterable

from reactor import StreamHandler

from .auth import HMACClientAuth, client_authenticate, with_hmac_auth
from .base import RemoteProtocolError
from .mpconn import FrameDecoder, MPClientHandler, MPConnectionHandler, frame

log = logging.getLogger(__name__)

MAX_JSON_FRAME = 1024 * 1024
MAX_PICKLE_MESSAGE = 1024 * 1024
PICKLE_PROTOCOL = pickle.DEFAULT_PROTOCOL

# Exceptions that may cross the wire by type: the builtins (a user's own exception class is sent
# as RuntimeError naming it: the other side could not, and should not, import it).
BUILTIN_EXCEPTIONS: dict[str, type[BaseException]] = {
    name: obj for name, obj in vars(builtins).items()
    if isinstance(obj, type) and issubclass(obj, Exception) and not name.startswith("_")}

# (module, name) the restricted Unpickler may load: containers and values, nothing that acts.
SAFE_GLOBALS: frozenset[tuple[str, str]] = frozenset(
    [("builtins", n) for n in ("set", "frozenset", "bytearray", "complex", "slice", "range")]
    + [("datetime", n) for n in ("date", "time", "datetime", "timedelta", "timezone")]
    + [("decimal", "Decimal"), ("fractions", "Fraction"), ("collections", "OrderedDict")])
# What a client also accepts in answers: the builtin exceptions.
SAFE_GLOBALS_WITH_EXCEPTIONS: frozenset[tuple[str, str]] = SAFE_GLOBALS | frozenset(
    ("builtins", name) for name in BUILTIN_EXCEPTIONS)


class RemoteError(Exception):
    """The remote function raised an exception of a type this side does not rebuild."""

    def __init__(self, type_name: str, message: str) -> None:
        super().__init__(f"{type_name}: {message}")
        self.type_name, self.message = type_name, message


class BadRequest(RemoteProtocolError):
    """A request that is not (name, args, kwargs): answered, then the connection is closed."""


class RestrictedUnpickler(pickle.Unpickler):
    """An Unpickler that loads only the globals in `allowed`; anything else is an error.
    (A class attribute, not an __init__ argument: a Python __init__ would double the cost of
    each small load; restricted_loads makes one subclass per allow-list.)"""

    allowed: frozenset[tuple[str, str]] = SAFE_GLOBALS

    def find_class(self, module: str, name: str) -> Any:
        if (module, name) in self.allowed:
            return super().find_class(module, name)
        raise pickle.UnpicklingError(f"global {module}.{name} is not allowed")


_unpicklers: dict[frozenset, type[RestrictedUnpickler]] = {}


def restricted_loads(data: bytes, allowed: Iterable[tuple[str, str]] = SAFE_GLOBALS) -> Any:
    """pickle.loads with find_class limited to allowed."""
    cls = _unpicklers.get(allowed)          # type: ignore[call-overload]
    if cls is None:
        allowed = frozenset(allowed)
        cls = _unpicklers.setdefault(allowed, type("Restricted", (RestrictedUnpickler,),
                                                   {"allowed": allowed}))
        if len(_unpicklers) > 64:
            _unpicklers.clear()
    return cls(io.BytesIO(data)).load()


_BYTES_OPS = {0x43: 1, 0x42: 4, 0x8E: 8}       # SHORT_BINBYTES, BINBYTES, BINBYTES8: length size
_BYTES_TAILS = (b"\x94.", b"q\x00.", b".")     # MEMOIZE or BINPUT 0 (or nothing), STOP


def bytes_pickle_payload(data: bytes) -> bytes | None:
    """The bytes object a pickle of one bytes object (protocol 3-5) holds, parsed without an
    Unpickler; None for any other pickle.  The recipe's client pickles every request twice
    (pickle.dumps, then Connection.send), so this outer layer is on every call's path."""
    if len(data) < 5 or data[0] != 0x80 or data[1] not in (3, 4, 5):
        return None
    i = 11 if data[2] == 0x95 else 2                # FRAME opcode + 8-byte length: skipped
    if i >= len(data):
        return None
    size = _BYTES_OPS.get(data[i])
    if size is None:
        return None
    start = i + 1 + size
    n = int.from_bytes(data[i + 1:start], "little")
    end = start + n
    if len(data) < end or data[end:] not in _BYTES_TAILS:
        return None
    return data[start:end]


def _wire_exception(exc: BaseException) -> Exception:
    """exc if the other side may rebuild it (a builtin type with picklable args), else a
    RuntimeError naming it."""
    if BUILTIN_EXCEPTIONS.get(type(exc).__name__) is type(exc):
        try:
            pickle.dumps(exc, PICKLE_PROTOCOL)
            return exc
        except Exception:
            pass
    return RuntimeError(f"{type(exc).__name__}: {exc}")


def rebuild_error(type_name: str, message: str) -> Exception:
    """The exception a JSON error answer stands for: a builtin type by name, else RemoteError."""
    cls = BUILTIN_EXCEPTIONS.get(type_name)
    return cls(message) if cls is not None else RemoteError(type_name, message)


class RPCHandler:
    """The recipe's registry of callable functions (kept under the recipe's name): no I/O, so
    every wire below and every test uses the same dispatch."""

    def __init__(self) -> None:
        self._functions: dict[str, Callable[..., Any]] = {}

    def register_function(self, func: Callable[..., Any], name: str | None = None) -> None:
        """Make func callable remotely as name (default: its __name__)."""
        name = func.__name__ if name is None else name
        if not name.isidentifier() or name.startswith("_"):
            raise ValueError(f"cannot register {name!r}: plain public names only (no dots, no _)")
        self._functions[name] = func

    @property
    def names(self) -> list[str]:
        return sorted(self._functions)

    def call(self, name: Any, args: Any = (), kwargs: Any = None) -> Any:
        """Run one call; NameError if name is not registered."""
        func = self._functions.get(name) if type(name) is str else None
        if func is None:
            raise NameError(f"no function named {name!r} is registered")
        return func(*args, **(kwargs or {}))

    def handle_request(self, request: Any) -> tuple[bool, Any]:
        """(True, result) or (False, exception) for a decoded request; BadRequest if it is not
        a (name, args, kwargs) triple of the right types."""
        if type(request) not in (list, tuple) or len(request) != 3:
            raise BadRequest("a request is (name, args, kwargs)")
        name, args, kwargs = request
        if (type(name) is not str or type(args) not in (list, tuple)
                or type(kwargs) is not dict or not all(type(k) is str for k in kwargs)):
            raise BadRequest("a request is (str, list, dict of str)")
        try:
            return True, self.call(name, args, kwargs)
        except Exception as exc:
            return False, exc


# -- JSON codec -----------------------------------------------------------------------------------

_json_dumps = json.JSONEncoder(separators=(",", ":"), allow_nan=True).encode
_json_loads = json.loads


def json_request(name: str, args: tuple, kwargs: dict) -> bytes:
    return _json_dumps([name, args, kwargs]).encode()


def json_answer(ok: bool, value: Any) -> bytes:
    """The answer frame's payload; a result JSON cannot carry becomes a TypeError answer."""
    if ok:
        try:
            return b'{"result":%s}' % _json_dumps(value).encode()
        except (TypeError, ValueError) as exc:
            value = TypeError(f"result not JSON serializable: {exc}")
    exc = _wire_exception(value)
    return _json_dumps({"error": {"type": type(exc).__name__, "message": str(exc)}}).encode()


def json_decode_answer(payload: bytes) -> Any:
    """A JSON answer: its result, or raise the error it carries."""
    answer = _json_loads(payload)
    if type(answer) is dict:
        if "result" in answer:
            return answer["result"]
        error = answer.get("error")
        if type(error) is dict:
            raise rebuild_error(str(error.get("type")), str(error.get("message")))
    raise RemoteProtocolError("malformed RPC answer")


# -- pickle codec ---------------------------------------------------------------------------------

def pickle_decode_request(payload: bytes, allowed: Iterable[tuple[str, str]] = SAFE_GLOBALS) -> tuple[Any, bool]:
    """(request, wrapped): the recipe's client pickles its request and Connection.send pickles
    those bytes again (wrapped); a plain Connection.send((name, args, kwargs)) does not."""
    try:
        inner = bytes_pickle_payload(payload)
        if inner is not None:
            return restricted_loads(inner, allowed), True
        outer = restricted_loads(payload, allowed)
        if type(outer) is bytes:
            return restricted_loads(outer, allowed), True
    except Exception as exc:
        raise BadRequest(f"cannot unpickle request: {exc}") from None
    return outer, False


def pickle_answer(ok: bool, value: Any, wrapped: bool) -> bytes:
    """The answer payload, wrapped as the recipe's `connection.send(pickle.dumps(r))` is."""
    if not ok:
        value = _wire_exception(value)
    try:
        data = pickle.dumps(value, PICKLE_PROTOCOL)
    except Exception as exc:
        data = pickle.dumps(TypeError(f"result cannot be pickled: {exc}"), PICKLE_PROTOCOL)
    return pickle.dumps(data, PICKLE_PROTOCOL) if wrapped else data


# -- servers on the reactor -----------------------------------------------------------------------

class JSONRPCServerHandler(StreamHandler):
    """JSON frames in, JSON frames out (put the HMAC stage in front: json_rpc_server())."""

    rpc: RPCHandler = RPCHandler()
    max_frame: int = MAX_JSON_FRAME

    def connection_made(self) -> None:
        self._decoder = FrameDecoder(self.max_frame)

    def data_received(self, data: bytes) -> None:
        try:
            payloads = self._decoder.frames(data)
        except RemoteProtocolError as exc:
            log.warning("%r: %s, resetting", self, exc)
            self.abort()
            return
        handle, write = self.rpc.handle_request, self.write
        for payload in payloads:
            if self.closing:
                return
            try:
                try:
                    request = _json_loads(payload)
                except Exception as exc:            # ValueError, RecursionError, ...
                    raise BadRequest(f"not JSON: {type(exc).__name__}") from None
                ok, value = handle(request)
            except BadRequest as exc:
                log.warning("%r: bad request: %s", self, exc)
                write(frame(json_answer(False, ValueError(str(exc)))))
                self.close()
                return
            write(frame(json_answer(ok, value)))


class PickleRPCServerHandler(MPConnectionHandler):
    """The recipe's RPC over multiprocessing.connection: pickles read only after mutual
    authentication, and then with the restricted Unpickler."""

    rpc: RPCHandler = RPCHandler()
    max_message: int = MAX_PICKLE_MESSAGE
    allowed_globals: frozenset[tuple[str, str]] = SAFE_GLOBALS

    def connection_made(self) -> None:
        if not self.authkey:        # MPConnectionHandler without a key would skip the handshake
            log.error("%r: the pickle RPC needs an authkey; refusing the connection", self)
            self.abort()
            return
        super().connection_made()

    def bytes_received(self, data: bytes) -> None:
        try:
            request, wrapped = pickle_decode_request(data, self.allowed_globals)
            ok, value = self.rpc.handle_request(request)
        except BadRequest as exc:
            log.warning("%r: bad request: %s", self, exc)
            self.send_bytes(pickle_answer(False, ValueError(str(exc)), True))
            self.close()
            return
        self.send_bytes(pickle_answer(ok, value, wrapped))


def json_rpc_server(rpc: RPCHandler, key: bytes, *, mutual: bool = False,
                    auth_timeout: float | None = 10.0,
                    max_frame: int = MAX_JSON_FRAME) -> type[StreamHandler]:
    """A handler class (a listener's factory) serving rpc over JSON behind the HMAC stage."""
    cls = type("JSONRPC", (JSONRPCServerHandler,), {"rpc": rpc, "max_frame": max_frame})
    return with_hmac_auth(cls, key, mutual=mutual, timeout=auth_timeout)


def pickle_rpc_server(rpc: RPCHandler, authkey: bytes, *, allow_legacy_md5: bool = True,
                      auth_timeout: float | None = 10.0, max_message: int = MAX_PICKLE_MESSAGE,
                      allowed_globals: Iterable[tuple[str, str]] = SAFE_GLOBALS) -> type[StreamHandler]:
    """A handler class serving rpc with pickle over multiprocessing.connection."""
    if not authkey:
        raise ValueError("the pickle codec needs an authkey: pickle is read only after authentication")
    return type("PickleRPC", (PickleRPCServerHandler,), {
        "rpc": rpc, "authkey": authkey, "allow_legacy_md5": allow_legacy_md5,
        "auth_timeout": auth_timeout, "max_message": max_message,
        "allowed_globals": frozenset(allowed_globals)})


# -- clients --------------------------------------------------------------------------------------

class _Proxy:
    """proxy.add(2, 3) -> self._call("add", (2, 3), {}); names with _ are never remote."""

    def __init__(self, call: Callable[[str, tuple, dict], Any]) -> None:
        self._call = call

    def __getattr__(self, name: str) -> Callable[..., Any]:
        if name.startswith("_"):
            raise AttributeError(name)
        call = self._call

        def do_rpc(*args: Any, **kwargs: Any) -> Any:
            return call(name, args, kwargs)
        do_rpc.__name__ = name
        return do_rpc


class RPCProxy(_Proxy):
    """The recipe's blocking proxy: proxy.add(2, 3) returns 5 or raises what add raised.
    Build it with connect()."""

    def __init__(self, sock_or_conn: Any, codec: str = "json", *,
                 max_answer: int = MAX_PICKLE_MESSAGE, timeout: float | None = 30.0) -> None:
        super().__init__(self._json_call if codec == "json" else self._pickle_call)
        if codec not in ("json", "pickle"):
            raise ValueError(f"unknown codec {codec!r}")
        self._conn, self._max, self._timeout = sock_or_conn, max_answer, timeout
        self._decoder = FrameDecoder(max_answer)

    def _json_call(self, name: str, args: tuple, kwargs: dict) -> Any:
        sock = self._conn
        sock.settimeout(self._timeout)
        sock.sendall(frame(json_request(name, args, kwargs)))
        decoder = self._decoder
        while (payload := decoder.next_frame()) is None:
            data = sock.recv(65536)
            if not data:
                raise ConnectionError("the server closed the connection")
            decoder.feed(data)
        return json_decode_answer(payload)

    def _pickle_call(self, name: str, args: tuple, kwargs: dict) -> Any:
        conn = self._conn
        conn.send_bytes(pickle.dumps((name, args, kwargs), PICKLE_PROTOCOL))
        if self._timeout is not None and not conn.poll(self._timeout):
            raise TimeoutError(f"no answer to {name} within {self._timeout} s")
        data = conn.recv_bytes(self._max)
        result = restricted_loads(data, SAFE_GLOBALS_WITH_EXCEPTIONS)
        if type(result) is bytes:                  # a recipe-style (twice pickled) answer
            result = restricted_loads(result, SAFE_GLOBALS_WITH_EXCEPTIONS)
        if isinstance(result, BaseException):
            raise result
        return result

    def close(self) -> None:
        self._conn.close()

    def __enter__(self) -> RPCProxy:
        return self

    def __exit__(self, *exc_info: Any) -> None:
        self.close()


def connect(address: tuple[str, int], key: bytes, codec: str = "json", *, mutual: bool = False,
            timeout: float | None = 30.0, ssl_context: Any = None,
            server_hostname: str | None = None) -> RPCProxy:
    """A blocking RPCProxy to address: JSON behind the HMAC stage (over TLS with ssl_context,
    verifying server_hostname, default the host), or pickle over a stdlib
    multiprocessing.connection.Client (answers read with the restricted Unpickler; the stdlib
    Client has no TLS)."""
    if codec == "pickle":
        if ssl_context is not None:
            raise ValueError("the pickle codec rides multiprocessing.connection, which has no TLS")
        from multiprocessing.connection import Client
        return RPCProxy(Client(address, authkey=key), "pickle", timeout=timeout)
    sock = socket.create_connection(address, timeout=timeout)
    try:
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        if ssl_context is not None:
            sock = ssl_context.wrap_socket(sock, server_hostname=server_hostname or address[0])
        client_authenticate(sock, key, mutual=mutual, timeout=timeout)
    except BaseException:
        sock.close()
        raise
    return RPCProxy(sock, "json", timeout=timeout)


class _ClientCalls:
    """What both reactor clients share: a queue of futures answered in order."""

    def _init_calls(self) -> None:
        self._futures: collections.deque[concurrent.futures.Future] = collections.deque()
        self._held: list[bytes] = []            # requests made before the wire is ready
        self._ready = False
        self.proxy = _Proxy(self.call)

    def call(self, name: str, args: tuple = (), kwargs: dict | None = None) -> concurrent.futures.Future:
        """Send a call now (or once authenticated); the future gets the result or exception.
        Must run on the reactor thread (reactor.call_soon_threadsafe from others)."""
        future: concurrent.futures.Future = concurrent.futures.Future()
        if self.closing:
            future.set_exception(ConnectionError("connection closed"))
            return future
        payload = self._encode(name, tuple(args), dict(kwargs or {}))
        self._futures.append(future)
        if self._ready:
            self._send_request(payload)
        else:
            self._held.append(payload)
        return future

    def _wire_ready(self) -> None:
        self._ready = True
        held, self._held = self._held, []
        for payload in held:
            self._send_request(payload)

    def _answer(self, decode: Callable[[], Any]) -> None:
        if not self._futures:
            log.warning("%r: an answer nobody asked for, closing", self)
            self.abort()
            return
        future = self._futures.popleft()
        try:
            result = decode()
        except RemoteProtocolError as exc:
            future.set_exception(exc)
            self.abort()
            return
        except Exception as exc:
            future.set_exception(exc)
            return
        future.set_result(result)

    def _fail_all(self, exc: BaseException | None) -> None:
        error = ConnectionError(f"connection lost: {exc}" if exc else "connection closed")
        while self._futures:
            self._futures.popleft().set_exception(error)


class JSONRPCClientProtocol(_ClientCalls, StreamHandler):
    """JSON RPC calls over frames, without authentication (JSONRPCClientHandler adds it)."""

    max_frame: int = MAX_JSON_FRAME

    def __init__(self, sock: socket.socket, address: Any = None) -> None:
        super().__init__(sock, address)
        self._init_calls()

    def _encode(self, name: str, args: tuple, kwargs: dict) -> bytes:
        return frame(json_request(name, args, kwargs))

    def _send_request(self, payload: bytes) -> None:
        self.write(payload)

    def connection_made(self) -> None:          # behind HMACClientAuth: once authenticated
        self._decoder = FrameDecoder(self.max_frame)
        self._wire_ready()

    def data_received(self, data: bytes) -> None:
        try:
            payloads = self._decoder.frames(data)
        except RemoteProtocolError as exc:
            log.warning("%r: %s, resetting", self, exc)
            self.abort()
            return
        for payload in payloads:
            self._answer(lambda: json_decode_answer(payload))

    def connection_lost(self, exc: BaseException | None) -> None:
        self._fail_all(exc)


class JSONRPCClientHandler(HMACClientAuth, JSONRPCClientProtocol):
    """A JSON RPC client on the reactor: answers the HMAC challenge, then `proxy.add(2, 3)`
    returns a concurrent.futures.Future.  Set auth_key (or use json_rpc_client())."""

    def auth_failed(self, exc: BaseException) -> None:
        self._fail_all(exc)


def json_rpc_client(key: bytes, *, mutual: bool = False,
                    auth_timeout: float | None = 10.0) -> type[JSONRPCClientHandler]:
    """A JSONRPCClientHandler class for connect_tcp(reactor, host, port, cls)."""
    return type("JSONRPCClient", (JSONRPCClientHandler,), {
        "auth_key": bytes(key), "auth_mutual": mutual, "auth_timeout": auth_timeout})


class PickleRPCClientHandler(_ClientCalls, MPClientHandler):
    """A pickle RPC client on the reactor over multiprocessing.connection; answers are read with
    the restricted Unpickler (the builtin exceptions allowed).  Set authkey."""

    max_message: int = MAX_PICKLE_MESSAGE

    def __init__(self, sock: socket.socket, address: Any = None) -> None:
        super().__init__(sock, address)
        self._init_calls()

    def _encode(self, name: str, args: tuple, kwargs: dict) -> bytes:
        return pickle.dumps((name, args, kwargs), PICKLE_PROTOCOL)

    def _send_request(self, payload: bytes) -> None:
        self.send_bytes(payload)

    def authenticated(self) -> None:
        self._wire_ready()

    def bytes_received(self, data: bytes) -> None:
        def decode() -> Any:
            result = restricted_loads(data, SAFE_GLOBALS_WITH_EXCEPTIONS)
            if type(result) is bytes:
                result = restricted_loads(result, SAFE_GLOBALS_WITH_EXCEPTIONS)
            if isinstance(result, BaseException):
                raise result
            return result
        self._answer(decode)

    def connection_lost(self, exc: BaseException | None) -> None:
        self._fail_all(exc)


def pickle_rpc_client(authkey: bytes, **options: Any) -> type[PickleRPCClientHandler]:
    """A PickleRPCClientHandler class for connect_tcp(reactor, host, port, cls)."""
    return type("PickleRPCClient", (PickleRPCClientHandler,), {"authkey": bytes(authkey), **options})
