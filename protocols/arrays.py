"""Large-array frames (recipe 11.13): a header, then the array's raw bytes, copied by no one.

The recipe sends an array with `send_from(arr, sock)`, slicing a memoryview as the kernel takes
it, and receives it with `recv_into(arr, sock)` into an array the receiver already has.  Here the
receiver does not know what comes, so every frame opens with a header saying all it needs to
allocate the destination once: the kind of object (bytes, array.array, any buffer, NumPy), its
format (array typecode, struct format or NumPy `dtype.str`), item size, shape, byte order, the
byte count, and a small opaque `meta` field for the application (apps.arrays puts its commands
there).  Then the payload.

Refused before anything is allocated: a byte count over `max_bytes`, meta over `max_meta`, a
shape that does not multiply out to the byte count, an object dtype (pointers mean nothing in
another process), a format that is not plain ASCII of the expected form.  The header is tiny
and bounded, so it is parsed as a sans-I/O core (`ArrayFramer`) and tested split at every byte.

Zero copies.  The sender hands the kernel a memoryview of the caller's own object, C order cast
to bytes; `StreamHandler.write()` would copy whatever the kernel does not take at once from a
mutable buffer (it must: its callers may reuse the buffer), so `ArrayHandler.write_buffer()`
queues the view itself, and the caller leaves the array alone until it has left
(`write_buffer_size` back to 0).  The receiver asks the core for `payload_buffer()`, the unfilled
rest of the destination, and `recv_into()`s it; only payload bytes that arrive in the same read
as their header are copied (at most one read, 127 KiB).  Under TLS (reactor.tls) the socket
carries ciphertext, so both ends fall back to the TLS layer's write() and reads: the framing is
the same, the zero-copy property is plaintext's alone.

NumPy is never imported unless a frame says it carries a NumPy array; a sender's array is
recognized through `sys.modules` (whoever made one has imported numpy already).  Without NumPy
such a frame arrives as a flat memoryview of its bytes.

Wire format, network byte order:
    "ARRY" | version 1 | kind | byte order ('<' '>' '|') | order ('C' 'F') | ndim | len(format)
    | len(meta) u32 | itemsize u32 | nbytes u64 | shape: ndim x u64 | format | meta | payload
"""
from __future__ import annotations

import array
import dataclasses
import importlib
import logging
import math
import re
import socket
import struct
import sys
from typing import Any, Callable

from reactor import StreamHandler, TLSStreamHandler

from .base import LocalProtocolError, RemoteProtocolError

log = logging.getLogger(__name__)

MAX_BYTES = 1 << 30          # largest payload a receiver allocates by default (1 GiB)
MAX_META = 64 * 1024
MAX_NDIM = 64                # PyBUF_MAX_NDIM
TLS_SLICE = 1 << 20          # under TLS, plaintext handed to the encrypting layer at a time

KIND_NONE = 0                # no array: a frame that carries only meta
KIND_BYTES = 1               # bytes or bytearray; arrives as bytearray (recv_into writes it)
KIND_ARRAY = 2               # array.array
KIND_BUFFER = 3              # anything else with the buffer protocol; received as a memoryview
KIND_NUMPY = 4               # numpy.ndarray; received as one when NumPy is importable
KIND_NAMES = {KIND_NONE: "none", KIND_BYTES: "bytes", KIND_ARRAY: "array",
              KIND_BUFFER: "buffer", KIND_NUMPY: "numpy"}

_MAGIC = b"ARRY"
_VERSION = 1
_FIXED = struct.Struct("!4sBBccBBIIQ")
_NATIVE = "<" if sys.byteorder == "little" else ">"
_STRUCT_FORMAT = re.compile(r"[\x21-\x7e]{1,255}")               # printable ASCII, no spaces
_NUMPY_FORMAT = re.compile(r"[<>|=][?a-zA-Z][0-9]{1,9}(\[[0-9]*[a-zA-Z]{1,2}\])?")
_CASTABLE = frozenset("bBhHiIlLqQnNfdP?c")                    # memoryview.cast() formats


@dataclasses.dataclass(frozen=True)
class ArrayHeader:
    """What a receiver needs to allocate the destination before the first payload byte."""

    kind: int
    format: str
    itemsize: int
    shape: tuple[int, ...]
    nbytes: int
    byteorder: str = _NATIVE     # of the payload's items: '<', '>', or '|' (NumPy: in format)
    order: str = "C"             # NumPy only: 'F' for a Fortran-ordered array
    meta: bytes = b""

    def encode(self) -> bytes:
        """The header's wire form."""
        fmt = self.format.encode("ascii")
        return b"".join([
            _FIXED.pack(_MAGIC, _VERSION, self.kind, self.byteorder.encode("ascii"),
                        self.order.encode("ascii"), len(self.shape), len(fmt), len(self.meta),
                        self.itemsize, self.nbytes),
            struct.pack(f"!{len(self.shape)}Q", *self.shape), fmt, self.meta])


@dataclasses.dataclass
class ArrayReceived:
    """Event: one whole frame arrived; array is None for a meta-only frame."""

    array: Any
    meta: bytes
    header: ArrayHeader


# -- the sending side -------------------------------------------------------------------------

def describe(obj: Any, meta: bytes = b"") -> tuple[ArrayHeader, memoryview]:
    """The header for obj and a flat byte view of its memory (no copy).  LocalProtocolError for
    what cannot be sent as it is: non-contiguous memory, NumPy object arrays, huge meta."""
    if len(meta) > 0xFFFFFFFF:
        raise LocalProtocolError("meta too long")
    if obj is None:
        return ArrayHeader(KIND_NONE, "", 0, (), 0, "|", "C", bytes(meta)), memoryview(b"")
    numpy = sys.modules.get("numpy")
    if numpy is not None and isinstance(obj, numpy.ndarray):
        return _describe_numpy(numpy, obj, meta)
    if isinstance(obj, (bytes, bytearray)):
        return (ArrayHeader(KIND_BYTES, "B", 1, (len(obj),), len(obj), "|", "C", bytes(meta)),
                memoryview(obj))
    if isinstance(obj, array.array):
        view = memoryview(obj).cast("B")
        return (ArrayHeader(KIND_ARRAY, obj.typecode, obj.itemsize, (len(obj),), view.nbytes,
                            _NATIVE, "C", bytes(meta)), view)
    try:
        view = memoryview(obj)
    except TypeError as exc:
        raise LocalProtocolError(f"cannot send {type(obj).__name__}: {exc}") from None
    if not view.c_contiguous:
        raise LocalProtocolError("the buffer is not C-contiguous: sending it would need a copy")
    if not _STRUCT_FORMAT.fullmatch(view.format):
        raise LocalProtocolError(f"buffer format {view.format!r} cannot be described")
    flat = view.cast("B") if (view.ndim != 1 or view.format != "B") else view
    return (ArrayHeader(KIND_BUFFER, view.format, view.itemsize, tuple(view.shape), view.nbytes,
                        _NATIVE, "C", bytes(meta)), flat)


def _describe_numpy(numpy: Any, obj: Any, meta: bytes) -> tuple[ArrayHeader, memoryview]:
    if obj.dtype.hasobject:
        raise LocalProtocolError("a NumPy object array holds pointers, not data")
    if obj.flags.c_contiguous:
        base, order = obj, "C"
    elif obj.flags.f_contiguous:
        base, order = obj.T, "F"                  # the transpose is C-contiguous: same bytes
    else:
        raise LocalProtocolError("the array is not contiguous: sending it would need a copy "
                                 "(numpy.ascontiguousarray makes one)")
    if obj.dtype.itemsize == 0:
        raise LocalProtocolError("NumPy dtype of item size 0")
    # A memoryview of the array itself refuses some dtypes (datetime64); a uint8 view of the
    # flattened array (a view, since it is contiguous) never does.
    flat = memoryview(base.reshape(-1).view(numpy.uint8))
    return (ArrayHeader(KIND_NUMPY, obj.dtype.str, obj.dtype.itemsize, tuple(obj.shape),
                        obj.nbytes, "|", order, bytes(meta)), flat)


def encode_array(obj: Any, meta: bytes = b"") -> tuple[bytes, memoryview]:
    """(header bytes, payload view): send the first, then the second, both as they are."""
    header, payload = describe(obj, meta)
    return header.encode(), payload


# -- the receiving side -------------------------------------------------------------------------

def allocate(header: ArrayHeader) -> tuple[Any, memoryview]:
    """The destination for a checked header, and a writable flat byte view of it: one
    allocation of exactly header.nbytes."""
    kind, n = header.kind, header.nbytes
    if kind == KIND_NONE:
        return None, memoryview(bytearray(0))
    if kind == KIND_BYTES:
        dest = bytearray(n)
        return dest, memoryview(dest)
    if kind == KIND_ARRAY:
        # One item repeated: a single allocation, no temporary of the full size.
        dest = array.array(header.format, bytes(header.itemsize)) * (n // header.itemsize)
        return dest, memoryview(dest).cast("B")
    if kind == KIND_NUMPY:
        numpy = _import_numpy()
        if numpy is not None:
            try:
                dtype = numpy.dtype(header.format)
            except (TypeError, ValueError) as exc:
                raise RemoteProtocolError(f"bad NumPy dtype {header.format!r}: {exc}") from None
            if dtype.hasobject or dtype.itemsize != header.itemsize:
                raise RemoteProtocolError(f"NumPy dtype {header.format!r} does not match its "
                                          f"item size {header.itemsize}")
            dest = numpy.empty(header.shape, dtype, order=header.order)
            base = dest if header.order == "C" else dest.T
            return dest, memoryview(base.reshape(-1).view(numpy.uint8))
    raw = bytearray(n)
    flat = memoryview(raw)
    fmt = header.format
    if (kind == KIND_BUFFER and len(fmt) == 1 and fmt in _CASTABLE and 0 not in header.shape
            and struct.calcsize(fmt) == header.itemsize
            and (header.itemsize == 1 or header.byteorder == _NATIVE)):
        return flat.cast(fmt, header.shape), flat
    return flat, flat        # flat bytes; the header keeps format, shape and byte order


def allocate_raw(header: ArrayHeader) -> tuple[Any, memoryview]:
    """Every payload into a bytearray, whatever its kind: for stores and relays that hand the
    bytes on with their header and never look inside (and so never import NumPy)."""
    dest = bytearray(header.nbytes)
    return dest, memoryview(dest)


def _import_numpy() -> Any:
    try:
        return importlib.import_module("numpy")
    except ImportError:
        return None


def _finish(header: ArrayHeader, dest: Any) -> Any:
    """Put a received array.array in this machine's byte order (in place)."""
    if (header.kind == KIND_ARRAY and header.itemsize > 1 and header.byteorder != _NATIVE
            and isinstance(dest, array.array)):
        dest.byteswap()
    return dest


_HEADER, _PAYLOAD, _ERROR = "HEADER", "PAYLOAD", "ERROR"


class ArrayFramer:
    """Split a byte stream into array frames: bytes in, ArrayReceived events out, no I/O.

    Two ways to feed it.  receive_data(data) takes any bytes (header, payload, several frames).
    While a payload is in progress, payload_buffer() is the unfilled rest of the destination:
    recv_into() it and report the count with payload_filled(n), and the payload never passes
    through an intermediate buffer."""

    def __init__(self, max_bytes: int = MAX_BYTES, max_meta: int = MAX_META,
                 allocate: Callable[[ArrayHeader], tuple[Any, memoryview]] = allocate,
                 accept: Callable[[ArrayHeader], None] | None = None) -> None:
        self.max_bytes, self.max_meta = max_bytes, max_meta
        self._allocate, self._accept = allocate, accept
        self.state = _HEADER
        self._buf = bytearray()           # header bytes so far
        self._need = _FIXED.size          # header bytes needed: the fixed part, then all of it
        self._fixed: tuple | None = None
        self._header: ArrayHeader | None = None
        self._dest: Any = None
        self._view: memoryview | None = None
        self._filled = 0

    @property
    def header_needed(self) -> int:
        """Header bytes still missing (0 during a payload): a blocking reader reads exactly
        these, never into the next frame."""
        return self._need - len(self._buf) if self.state == _HEADER else 0

    @property
    def in_frame(self) -> bool:
        """True between a frame's first byte and its last (an EOF now truncates a frame)."""
        return self.state == _PAYLOAD or bool(self._buf)

    @property
    def header(self) -> ArrayHeader | None:
        """The header of the frame whose payload is arriving."""
        return self._header

    def payload_buffer(self) -> memoryview | None:
        """Where the next payload bytes go, or None when no payload is in progress."""
        if self.state != _PAYLOAD:
            return None
        return self._view[self._filled:]

    def payload_filled(self, n: int) -> list[ArrayReceived]:
        """n bytes were written into payload_buffer()."""
        if self.state != _PAYLOAD or not 0 <= n <= len(self._view) - self._filled:
            raise LocalProtocolError("payload_filled() without that much payload buffer")
        self._filled += n
        return [self._complete()] if self._filled == len(self._view) else []

    def receive_data(self, data: bytes | bytearray | memoryview) -> list[ArrayReceived]:
        """Feed bytes; return the frames they complete."""
        if self.state == _ERROR:
            raise RemoteProtocolError("the stream is past a framing error")
        events: list[ArrayReceived] = []
        data = memoryview(data).cast("B") if not isinstance(data, bytes) else memoryview(data)
        pos, end = 0, len(data)
        while pos < end:
            if self.state == _PAYLOAD:
                take = min(end - pos, len(self._view) - self._filled)
                self._view[self._filled:self._filled + take] = data[pos:pos + take]
                self._filled += take
                pos += take
                if self._filled == len(self._view):
                    events.append(self._complete())
                continue
            take = min(self._need - len(self._buf), end - pos)
            self._buf += data[pos:pos + take]
            pos += take
            if len(self._buf) == self._need:
                try:
                    event = self._header_part_done()
                except RemoteProtocolError:
                    self.state = _ERROR
                    raise
                if event is not None:
                    events.append(event)
        return events

    def _header_part_done(self) -> ArrayReceived | None:
        if self._fixed is None:
            self._fixed = self._check_fixed(_FIXED.unpack(self._buf))
            _, _, _, _, _, ndim, flen, mlen, _, _ = self._fixed
            self._need = _FIXED.size + 8 * ndim + flen + mlen
            if self._need > len(self._buf):
                return None
        header = self._check_rest(self._fixed, memoryview(self._buf)[_FIXED.size:])
        if self._accept is not None:
            self._accept(header)                  # may refuse, still before any allocation
        self._buf, self._need, self._fixed = bytearray(), _FIXED.size, None
        dest, view = self._allocate(header)
        if view.nbytes != header.nbytes:
            raise LocalProtocolError("allocate() returned a view of the wrong size")
        self._header, self._dest, self._view, self._filled = header, dest, view, 0
        self.state = _PAYLOAD
        return self._complete() if header.nbytes == 0 else None

    def _complete(self) -> ArrayReceived:
        header, dest = self._header, self._dest
        self._header = self._dest = self._view = None
        self.state = _HEADER
        if header.kind == KIND_NONE:
            dest = None
        return ArrayReceived(_finish(header, dest), header.meta, header)

    def _check_fixed(self, fixed: tuple) -> tuple:
        magic, version, kind, byteorder, order, ndim, flen, mlen, itemsize, nbytes = fixed
        if magic != _MAGIC:
            raise RemoteProtocolError(f"not an array frame (magic {bytes(magic)!r})")
        if version != _VERSION:
            raise RemoteProtocolError(f"array frame version {version} (this side speaks 1)")
        if kind not in KIND_NAMES:
            raise RemoteProtocolError(f"unknown array kind {kind}")
        if byteorder not in (b"<", b">", b"|") or order not in (b"C", b"F"):
            raise RemoteProtocolError("bad byte order or memory order in an array header")
        if nbytes > self.max_bytes:
            raise RemoteProtocolError(f"array of {nbytes} bytes announced; the limit is "
                                      f"{self.max_bytes}", 413)
        if mlen > self.max_meta:
            raise RemoteProtocolError(f"array meta of {mlen} bytes announced; the limit is "
                                      f"{self.max_meta}", 431)
        if ndim > MAX_NDIM:
            raise RemoteProtocolError(f"array of {ndim} dimensions (at most {MAX_NDIM})")
        return fixed

    @staticmethod
    def _check_rest(fixed: tuple, rest: memoryview) -> ArrayHeader:
        _, _, kind, byteorder, order, ndim, flen, mlen, itemsize, nbytes = fixed
        shape = struct.unpack_from(f"!{ndim}Q", rest)
        raw_format = bytes(rest[8 * ndim:8 * ndim + flen])
        meta = bytes(rest[8 * ndim + flen:])
        fmt = raw_format.decode("ascii", "replace")
        if order == b"F" and kind != KIND_NUMPY:
            raise RemoteProtocolError("Fortran order in a frame that is not a NumPy array")
        if kind == KIND_NONE:
            if flen or ndim or nbytes:
                raise RemoteProtocolError("a meta-only frame with array fields")
        elif itemsize == 0 or math.prod(shape) * itemsize != nbytes:
            raise RemoteProtocolError(f"shape {shape} x item size {itemsize} is not {nbytes} bytes")
        elif kind == KIND_BYTES and (fmt != "B" or itemsize != 1 or ndim != 1):
            raise RemoteProtocolError("a bytes frame must be format 'B', 1 dimension")
        elif kind == KIND_ARRAY and (len(fmt) != 1 or fmt not in array.typecodes or ndim != 1
                                     or array.array(fmt).itemsize != itemsize):
            raise RemoteProtocolError(f"array.array typecode {fmt!r} of item size {itemsize} "
                                      "does not exist here")
        elif kind == KIND_NUMPY and (not _NUMPY_FORMAT.fullmatch(fmt) or fmt[1] == "O"):
            raise RemoteProtocolError(f"bad NumPy dtype {fmt!r}")
        elif kind == KIND_BUFFER and not _STRUCT_FORMAT.fullmatch(fmt):
            raise RemoteProtocolError(f"bad buffer format {fmt!r}")
        return ArrayHeader(kind, fmt, itemsize, tuple(shape), nbytes, byteorder.decode(),
                           order.decode(), meta)


# -- blocking sockets: the recipe's send_from / recv_into ------------------------------------

def send_array(sock: socket.socket, obj: Any, meta: bytes = b"") -> None:
    """Send obj as one frame on a blocking socket, from its own memory."""
    header, payload = encode_array(obj, meta)
    sendall_views(sock, [memoryview(header), payload])


def send_frame(sock: socket.socket, header: ArrayHeader, payload: memoryview) -> None:
    """Send a frame made of a known header and its payload bytes (a store sending back what
    it received with allocate_raw)."""
    sendall_views(sock, [memoryview(header.encode()), memoryview(payload).cast("B")])


def sendall_views(sock: socket.socket, views: list[memoryview]) -> None:
    """sendall() of several buffers in order, gathered into one sendmsg() while they fit: a
    small header and its payload leave in one segment, not two (and never wait on Nagle)."""
    views = [v for v in views if v.nbytes]
    while views:
        try:
            sent = sock.sendmsg(views)
        except NotImplementedError:          # TLS sockets have no sendmsg()
            for view in views:
                sock.sendall(view)
            return
        while sent:
            if sent >= views[0].nbytes:
                sent -= views.pop(0).nbytes
            else:
                views[0] = views[0][sent:]
                sent = 0


Allocate = Callable[[ArrayHeader], tuple[Any, memoryview]]


def recv_frame(sock: socket.socket, *, max_bytes: int = MAX_BYTES, max_meta: int = MAX_META,
               allocate: Allocate = allocate) -> ArrayReceived:
    """Receive one frame from a blocking socket, payload straight into its destination.
    EOFError if the peer closes (before or inside a frame); RemoteProtocolError for a bad or
    oversized header (nothing allocated then)."""
    framer = ArrayFramer(max_bytes, max_meta, allocate)
    while True:
        buf = framer.payload_buffer()
        if buf is not None:
            n = sock.recv_into(buf)
            if not n:
                raise EOFError("connection closed in the middle of an array")
            events = framer.payload_filled(n)
        else:
            data = sock.recv(framer.header_needed)
            if not data:
                raise EOFError("connection closed in the middle of an array header"
                               if framer.in_frame else "connection closed")
            events = framer.receive_data(data)
        if events:
            return events[0]


def recv_array(sock: socket.socket, *, max_bytes: int = MAX_BYTES) -> Any:
    """Receive one array from a blocking socket (recv_frame without the meta)."""
    return recv_frame(sock, max_bytes=max_bytes).array


# -- the reactor handler ------------------------------------------------------------------------

class ArrayHandler(StreamHandler):
    """A connection carrying array frames both ways: send_array(), override array_received().

    Flow control: past high_water queued bytes pause_writing() is called, and a producer that
    overrides it waits for resume_writing() before sending more; the queue holds views of the
    caller's arrays, not copies, so what it bounds is how many arrays are in flight.  A slow
    reader on the other side fills the kernel's buffers, then this queue, then pauses the
    producer.  Reading is not paused (see pause_writing)."""

    max_bytes: int = MAX_BYTES
    max_meta: int = MAX_META
    raw_arrays: bool = False          # True: every payload arrives as a bytearray (allocate_raw)

    def __init__(self, sock: socket.socket, address: Any = None) -> None:
        super().__init__(sock, address)
        self.framer = ArrayFramer(self.max_bytes, self.max_meta,
                                  allocate_raw if self.raw_arrays else allocate,
                                  self.header_received)

    # -- sending

    def send_array(self, obj: Any, meta: bytes = b"") -> None:
        """Queue obj as one frame; it is sent from obj's own memory, so leave obj unchanged
        until write_buffer_size falls back to 0."""
        header, payload = encode_array(obj, meta)
        self.write(header)
        self.write_buffer(payload)

    def send_frame(self, header: ArrayHeader, payload: memoryview) -> None:
        """Queue a frame from a known header and its payload bytes."""
        self.write(header.encode())
        self.write_buffer(payload)

    def write_buffer(self, data: Any) -> None:
        """write() without its copy of a mutable buffer: the kernel sends straight from data's
        memory, now or later, so the caller must not change it before it has left."""
        if isinstance(self, TLSStreamHandler):
            # The wire carries ciphertext, new memory whatever is done here: the TLS layer's
            # write() encrypts, a slice at a time so that no single record batch is huge.
            view = memoryview(data).cast("B")
            for pos in range(0, view.nbytes, TLS_SLICE):
                self.write(view[pos:pos + TLS_SLICE])
            return
        if self._write_blocked:
            self.write(b"")       # write()'s rules: dropped while closing, an error after EOF
            return
        view = memoryview(data).cast("B")
        if not view.nbytes:
            return
        if not self._queue:
            try:
                sent = self._send(view)
            except (BlockingIOError, InterruptedError):
                sent = 0
            except OSError as exc:
                self._lost(exc)
                return
            self.bytes_out += sent
            if sent == view.nbytes:
                return
            view = view[sent:]
            if self.reactor is not None:
                self.reactor.update(self)
        self._queue.append(view)
        self._queued += view.nbytes
        if not self._write_paused and self._queued > self.high_water:
            self._write_paused = True
            self.pause_writing()

    def pause_writing(self) -> None:
        """Past high_water: a producer stops sending until resume_writing().  Reading goes on,
        unlike StreamHandler's default: two peers each sending the other a large array would
        otherwise both stop reading and wait for ever.  A request/response server that must
        not read requests faster than its answers leave restores the default."""

    def resume_writing(self) -> None:
        """Back under low_water: a producer may send again."""

    # -- receiving

    def handle_receive(self) -> None:
        buf = self.framer.payload_buffer()
        if buf is None or isinstance(self, TLSStreamHandler):
            super().handle_receive()          # a header (read a chunk, the framer splits it),
            return                            # or ciphertext, for the TLS layer to decrypt
        if not self.is_reading:
            return
        try:
            n = self.sock.recv_into(buf)
        except (BlockingIOError, InterruptedError):
            return
        except OSError as exc:
            self._lost(exc)
            return
        if not n:
            self._eof_seen()
            return
        self.bytes_in += n
        self._deliver(self.framer.payload_filled(n))

    def data_received(self, data: bytes) -> None:
        try:
            events = self.framer.receive_data(data)
        except RemoteProtocolError as exc:
            self.protocol_error(exc)
            return
        self._deliver(events)

    def _deliver(self, events: list[ArrayReceived]) -> None:
        for event in events:
            if self.closing:
                return
            self.frame_received(event)

    def eof_received(self) -> bool | None:
        if self.framer.in_frame:
            log.warning("%r: peer closed in the middle of an array frame", self)
        return None

    def header_received(self, header: ArrayHeader) -> None:
        """A header passed the framer's checks and its destination is about to be allocated:
        raise RemoteProtocolError to refuse it first (a quota, a name that is not allowed)."""

    def frame_received(self, frame: ArrayReceived) -> None:
        """One whole frame arrived; by default array_received(frame.array, frame.meta)."""
        self.array_received(frame.array, frame.meta)

    def array_received(self, array: Any, meta: bytes) -> None:
        """One whole array arrived (None for a meta-only frame)."""

    def protocol_error(self, exc: RemoteProtocolError) -> None:
        """The peer broke the framing (or header_received refused): by default close."""
        log.warning("%r: %s, closing", self, exc)
        self.abort()
