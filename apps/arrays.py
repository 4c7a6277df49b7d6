"""Array store (recipe 11.13): keep named arrays in memory and send them back.

    python -m apps.arrays --port 16000 [--max-bytes N] [--max-total N] [--allow CIDR] [--deny CIDR]
                          [--tls-cert FILE [--tls-key FILE] [--tls-client-ca FILE]]

    with ArrayClient(("127.0.0.1", 16000)) as store:
        store.put("weights", array.array("d", ...))     # or bytes, a memoryview, a NumPy array
        weights = store.get("weights")                   # the same type, shape and bytes
        store.list(); store.delete("weights")

Every message is one array frame (protocols.arrays); the command rides in the frame's meta as
JSON ({"op": "put", "name": "w"}) and the array, if any, is the frame's payload.  The store
never looks inside an array: it receives every payload into one bytearray with its header
(allocate_raw) and sends both back unchanged, so NumPy arrays round-trip through a server that
has no NumPy, and a get costs no copy (the stored bytes go out from their own memory; a put
under the same name replaces the object, never changes it, so a get in flight is safe).

Memory is bounded twice, both times from the header, before anything is allocated: one array
may not exceed --max-bytes, and the store with the arrays being received may not exceed
--max-total.  A refused put gets an error frame and the connection is closed (its payload is on
the way and would have to be read to keep the stream in step).
"""
from __future__ import annotations

import dataclasses
import json
import logging
import socket
import ssl
import sys
from typing import Any

from protocols.arrays import (KIND_NAMES, KIND_NONE, MAX_BYTES, ArrayHandler, ArrayHeader,
                              ArrayReceived, recv_frame, send_array)
from protocols.base import RemoteProtocolError
from reactor import Reactor, listen_tcp

from . import _cli, _tls

log = logging.getLogger(__name__)

DEFAULT_PORT = 16000
MAX_TOTAL = 4 << 30
MAX_NAME = 256


class ArrayStore:
    """Named arrays as (header, bytes), with a byte budget that counts arrays still arriving."""

    def __init__(self, max_total: int = MAX_TOTAL) -> None:
        self.max_total = max_total
        self.arrays: dict[str, tuple[ArrayHeader, bytearray]] = {}
        self.stored = 0           # bytes held
        self.reserved = 0         # bytes promised to puts whose payload is still arriving

    def reserve(self, nbytes: int) -> None:
        """Promise room for a put before its payload is allocated, or refuse it."""
        if self.stored + self.reserved + nbytes > self.max_total:
            raise RemoteProtocolError(f"store full: {nbytes} bytes more would pass the "
                                      f"{self.max_total}-byte limit", 507)
        self.reserved += nbytes

    def release(self, nbytes: int) -> None:
        """Give back room promised to a put that ended (stored, or cut short)."""
        self.reserved -= nbytes

    def put(self, name: str, header: ArrayHeader, data: bytearray) -> None:
        """Store a received array (its room was reserved)."""
        self.release(header.nbytes)
        old = self.arrays.pop(name, None)
        if old is not None:
            self.stored -= old[0].nbytes
        self.arrays[name] = (dataclasses.replace(header, meta=b""), data)
        self.stored += header.nbytes

    def delete(self, name: str) -> bool:
        """Forget name; False if there was no such array."""
        old = self.arrays.pop(name, None)
        if old is not None:
            self.stored -= old[0].nbytes
        return old is not None

    def describe(self) -> dict[str, dict[str, Any]]:
        """What `list` answers: each array's kind, format, shape and size, never its bytes."""
        return {name: {"kind": KIND_NAMES[h.kind], "format": h.format, "shape": list(h.shape),
                       "nbytes": h.nbytes} for name, (h, _) in self.arrays.items()}


def _reply(**fields: Any) -> bytes:
    return json.dumps(fields, separators=(",", ":")).encode()


def _command(meta: bytes) -> dict[str, Any]:
    try:
        cmd = json.loads(meta)
    except (UnicodeDecodeError, ValueError):
        raise RemoteProtocolError("meta is not a JSON command") from None
    if not isinstance(cmd, dict) or cmd.get("op") not in ("put", "get", "list", "delete"):
        raise RemoteProtocolError("unknown command")
    if cmd["op"] != "list":
        name = cmd.get("name")
        if not isinstance(name, str) or not 0 < len(name) <= MAX_NAME:
            raise RemoteProtocolError(f"a name is a string of 1 to {MAX_NAME} characters")
    return cmd


class ArrayStoreHandler(ArrayHandler):
    """One client of the store: commands in, replies out, arrays never copied."""

    raw_arrays = True
    store: ArrayStore           # set by the factory

    def __init__(self, sock: socket.socket, address: Any = None) -> None:
        super().__init__(sock, address)
        self._command: dict[str, Any] | RemoteProtocolError | None = None
        self._reserved = 0

    def header_received(self, header: ArrayHeader) -> None:
        try:
            cmd = _command(header.meta)
            if header.kind == KIND_NONE and cmd["op"] == "put":
                raise RemoteProtocolError("put without an array")
        except RemoteProtocolError as exc:
            if header.kind != KIND_NONE:
                raise               # a payload follows that nobody wants: refuse it whole
            self._command = exc     # answered, and the stream stays in step
            return
        self._command = cmd
        if header.kind != KIND_NONE:
            if cmd["op"] != "put":
                raise RemoteProtocolError(f"{cmd['op']} carries no array")
            self.store.reserve(header.nbytes)
            self._reserved = header.nbytes

    def frame_received(self, frame: ArrayReceived) -> None:
        cmd, self._command = self._command, None
        if isinstance(cmd, RemoteProtocolError):
            self.send_array(None, _reply(ok=False, error=str(cmd)))
            return
        op, name = cmd["op"], cmd.get("name")
        if op == "put":
            self._reserved = 0
            self.store.put(name, frame.header, frame.array)
            self.send_array(None, _reply(ok=True))
        elif op == "get":
            found = self.store.arrays.get(name)
            if found is None:
                self.send_array(None, _reply(ok=False, error="no such array", missing=name))
            else:
                header, data = found
                self.send_frame(dataclasses.replace(header, meta=_reply(ok=True)), memoryview(data))
        elif op == "delete":
            if self.store.delete(name):
                self.send_array(None, _reply(ok=True))
            else:
                self.send_array(None, _reply(ok=False, error="no such array", missing=name))
        else:
            self.send_array(None, _reply(ok=True, arrays=self.store.describe()))

    def pause_writing(self) -> None:
        """Answers back up: read no more commands until they leave (a client that asks and
        does not read is not served further)."""
        self.pause_reading()

    def resume_writing(self) -> None:
        self.resume_reading()

    def protocol_error(self, exc: RemoteProtocolError) -> None:
        log.warning("%r: %s, closing", self, exc)
        self._release()
        self.send_array(None, _reply(ok=False, error=str(exc)))
        self.close()

    def connection_lost(self, exc: BaseException | None) -> None:
        self._release()

    def _release(self) -> None:
        if self._reserved:
            self.store.release(self._reserved)
            self._reserved = 0


# -- the blocking client ------------------------------------------------------------------------

class ArrayStoreError(RuntimeError):
    """The store refused a command."""


class ArrayClient:
    """A blocking client of apps.arrays: one connection, one command at a time."""

    def __init__(self, address: tuple[str, int] = ("127.0.0.1", DEFAULT_PORT), *,
                 timeout: float | None = 30.0, max_bytes: int = MAX_BYTES,
                 ssl_context: ssl.SSLContext | None = None,
                 server_hostname: str | None = None) -> None:
        sock = socket.create_connection(address, timeout=timeout)
        try:
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            if ssl_context is not None:
                sock = ssl_context.wrap_socket(sock, server_hostname=server_hostname or address[0])
        except BaseException:
            sock.close()
            raise
        self.sock = sock
        self.max_bytes = max_bytes

    def put(self, name: str, obj: Any) -> None:
        """Store obj (bytes, bytearray, array.array, a buffer, a NumPy array) under name."""
        try:
            send_array(self.sock, obj, _reply(op="put", name=name))
        except OSError as exc:
            # Refused mid-send (too big, store full): the reason may be waiting to be read.
            try:
                reply = recv_frame(self.sock, max_bytes=0)
            except (OSError, EOFError, RemoteProtocolError):
                raise exc from None
            raise ArrayStoreError(json.loads(reply.meta).get("error", "refused")) from exc
        self._call(None)

    def get(self, name: str) -> Any:
        """The array stored under name, as the type it was put as (KeyError if none)."""
        send_array(self.sock, None, _reply(op="get", name=name))
        return self._call(name).array

    def list(self) -> dict[str, dict[str, Any]]:
        """{name: {"kind", "format", "shape", "nbytes"}} of every stored array."""
        send_array(self.sock, None, _reply(op="list"))
        return json.loads(self._call(None).meta)["arrays"]

    def delete(self, name: str) -> None:
        """Forget the array stored under name (KeyError if none)."""
        send_array(self.sock, None, _reply(op="delete", name=name))
        self._call(name)

    def _call(self, name: str | None) -> ArrayReceived:
        frame = recv_frame(self.sock, max_bytes=self.max_bytes)
        reply = json.loads(frame.meta)
        if not reply.get("ok"):
            if "missing" in reply:
                raise KeyError(reply["missing"])
            raise ArrayStoreError(reply.get("error", "refused"))
        return frame

    def close(self) -> None:
        """Close the connection (the store keeps what was put)."""
        self.sock.close()

    def __enter__(self) -> ArrayClient:
        return self

    def __exit__(self, *exc_info: Any) -> None:
        self.close()


def make_handler(store: ArrayStore | None = None,
                 max_bytes: int = MAX_BYTES) -> type[ArrayStoreHandler]:
    """The listener factory for one store (apps.serve builds its own with this)."""
    return type("ArrayStoreHandler", (ArrayStoreHandler,),
                {"store": store if store is not None else ArrayStore(), "max_bytes": max_bytes})


def build_parser():
    p = _cli.parser("Array store (Cookbook 11.13): put/get/list/delete named arrays", DEFAULT_PORT)
    p.add_argument("--max-bytes", type=int, default=MAX_BYTES,
                   help=f"largest array accepted, refused from its header (default {MAX_BYTES})")
    p.add_argument("--max-total", type=int, default=MAX_TOTAL,
                   help=f"bytes the store may hold, arrays arriving included (default {MAX_TOTAL})")
    _cli.add_cidr_flags(p)
    _tls.add_tls_flags(p)
    return p


def mount(reactor: Reactor, args, ctx=None) -> _cli.Mounted:
    """Put the array store's listener on reactor (main() and apps.serve)."""
    factory = make_handler(ArrayStore(args.max_total), args.max_bytes)
    listener = listen_tcp(reactor, args.host, args.port, factory, ssl_context=ctx,
                          max_connections=args.max_connections, allow=args.allow, deny=args.deny)
    return _cli.Mounted([listener], [(_tls.scheme("tcp", ctx), listener.address, "arrays")])


def main(argv: list[str] | None = None) -> int:
    p = build_parser()
    args = p.parse_args(argv)
    ctx = _tls.context_or_exit(p, args)
    _cli.setup_logging(args.log_level)
    reactor = Reactor()
    return _cli.run(reactor, mount(reactor, args, ctx), args.grace)


if __name__ == "__main__":
    sys.exit(main())
