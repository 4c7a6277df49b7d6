"""Array frames: the core fed at every split, the blocking pair, and ArrayHandler over sockets.

The oracle for "byte-exact" is the sender's own memory: the receiver's bytes must equal the flat
view describe() gives of the object sent, and type, format and shape must come back as sent.
"""
from __future__ import annotations

import array
import dataclasses
import socket
import struct
import subprocess
import sys
import threading
import tracemalloc
from pathlib import Path

import pytest

from protocols.arrays import (KIND_BUFFER, KIND_BYTES, KIND_NUMPY, ArrayFramer, ArrayHandler,
                              ArrayReceived, allocate, allocate_raw, describe, encode_array,
                              recv_array, recv_frame, send_array)
from protocols.base import LocalProtocolError, RemoteProtocolError
from reactor.testing import fill_socket, run_until

ROOT = Path(__file__).resolve().parents[2]


def payload_bytes(obj) -> bytes:
    """The bytes a frame for obj carries: the oracle."""
    return bytes(describe(obj)[1])


def received_bytes(arr) -> bytes:
    if arr is None:
        return b""
    numpy = sys.modules.get("numpy")
    if numpy is not None and isinstance(arr, numpy.ndarray):
        return arr.tobytes(order="A")
    return bytes(memoryview(arr).cast("B"))


def assert_same_array(sent, got) -> None:
    if sent is None:
        assert got is None
        return
    assert received_bytes(got) == payload_bytes(sent)
    if isinstance(sent, (bytes, bytearray)):
        assert type(got) is bytearray
    elif isinstance(sent, array.array):
        assert type(got) is array.array and got.typecode == sent.typecode and got == sent
    elif isinstance(sent, memoryview):
        assert isinstance(got, memoryview)
        assert (got.format, got.shape) == (sent.format, sent.shape)


def plain_objects() -> list:
    return [
        None,
        b"",
        b"hello, arrays",
        bytearray(range(256)) * 3,
        array.array("d", [1.5, -2.25, 3e300]),
        array.array("h", range(-50, 50)),
        array.array("B"),
        array.array("q", [2**62, -1, 0]),
        memoryview(bytearray(range(48))).cast("d", [2, 3]),
        memoryview(bytearray(range(24))).cast("i", [2, 3]),
        memoryview(b"\x01\x02\x03\x04").cast("B", [2, 2]),
    ]


def roundtrip_core(obj, meta=b"") -> ArrayReceived:
    header, payload = encode_array(obj, meta)
    (event,) = ArrayFramer().receive_data(header + bytes(payload))
    return event


# -- the core ------------------------------------------------------------------------------------

@pytest.mark.parametrize("obj", plain_objects(), ids=lambda o: type(o).__name__)
def test_objects_round_trip_through_the_core(obj):
    event = roundtrip_core(obj, b"meta")
    assert event.meta == b"meta"
    assert_same_array(obj, event.array)


def test_ctypes_buffer_with_an_explicit_byte_order_arrives_flat_with_its_format():
    ctypes = pytest.importorskip("ctypes")
    obj = (ctypes.c_int * 3)(1, 2, 3)
    event = roundtrip_core(obj)
    assert event.header.kind == KIND_BUFFER and event.header.format == memoryview(obj).format
    assert event.header.shape == (3,) and bytes(event.array) == bytes(obj)


def three_frames() -> tuple[bytes, list]:
    objs = [None, array.array("h", [1, -2, 3, 300]), memoryview(bytearray(range(24))).cast("h", [3, 4])]
    metas = [b'{"op": "hello"}', b"", b"x" * 40]
    wire = b"".join(h + bytes(p) for h, p in (encode_array(o, m) for o, m in zip(objs, metas)))
    return wire, list(zip(objs, metas))


def check_events(events, expected) -> None:
    assert len(events) == len(expected)
    for event, (obj, meta) in zip(events, expected):
        assert event.meta == meta
        assert_same_array(obj, event.array)


WIRE, EXPECTED = three_frames()


@pytest.mark.parametrize("cut", range(len(WIRE) + 1))
def test_frames_split_at_every_byte(cut):
    framer = ArrayFramer()
    events = framer.receive_data(WIRE[:cut]) + framer.receive_data(WIRE[cut:])
    check_events(events, EXPECTED)
    assert not framer.in_frame


def test_frames_fed_a_byte_at_a_time():
    framer = ArrayFramer()
    events = []
    for i in range(len(WIRE)):
        events += framer.receive_data(WIRE[i:i + 1])
    check_events(events, EXPECTED)


@pytest.mark.parametrize("step", [1, 7, 4096])
def test_payload_buffer_is_filled_in_place(step):
    obj = array.array("i", range(3000))
    header, payload = encode_array(obj)
    framer = ArrayFramer()
    assert framer.receive_data(header + bytes(payload[:5])) == []
    dest = framer.payload_buffer()
    assert dest is not None and len(dest) == payload.nbytes - 5
    pos, events = 5, []
    while pos < payload.nbytes:
        buf = framer.payload_buffer()
        n = min(step, len(buf))
        buf[:n] = payload[pos:pos + n]                  # what recv_into does
        events += framer.payload_filled(n)
        pos += n
    (event,) = events
    assert event.array == obj and framer.payload_buffer() is None


def test_header_needed_never_reaches_into_the_payload():
    header, payload = encode_array(array.array("d", [1.0, 2.0]), b"mm")
    framer = ArrayFramer()
    got = 0
    while framer.header_needed:
        n = framer.header_needed
        assert got + n <= len(header)
        framer.receive_data(header[got:got + n])
        got += n
    assert got == len(header) and len(framer.payload_buffer()) == payload.nbytes


def test_array_in_the_other_byte_order_is_swapped_into_this_one():
    obj = array.array("i", [1, 2, 70000])
    header, payload = describe(obj)
    other = ">" if header.byteorder == "<" else "<"
    swapped = array.array("i", obj)
    swapped.byteswap()
    wire = dataclasses.replace(header, byteorder=other).encode() + bytes(swapped)
    (event,) = ArrayFramer().receive_data(wire)
    assert event.array == obj


def test_raw_allocation_keeps_every_payload_as_bytes_with_its_header():
    obj = memoryview(bytearray(range(24))).cast("d", [3])
    header, payload = encode_array(obj)
    (event,) = ArrayFramer(allocate=allocate_raw).receive_data(header + bytes(payload))
    assert type(event.array) is bytearray and bytes(event.array) == bytes(payload)
    assert event.header.format == "d" and event.header.shape == (3,)


# -- refusals ------------------------------------------------------------------------------------

class CountingAllocate:
    def __init__(self):
        self.calls = 0

    def __call__(self, header):
        self.calls += 1
        return allocate(header)


def fixed_header(nbytes: int, *, kind=KIND_BYTES, ndim=1, flen=1, mlen=0, itemsize=1,
                 magic=b"ARRY", version=1, byteorder=b"|", order=b"C") -> bytes:
    return struct.pack("!4sBBccBBIIQ", magic, version, kind, byteorder, order, ndim, flen, mlen,
                       itemsize, nbytes)


@pytest.mark.parametrize("nbytes", [1025, 2**40, 2**64 - 1])
def test_oversized_header_is_refused_before_anything_is_allocated(nbytes):
    alloc = CountingAllocate()
    framer = ArrayFramer(max_bytes=1024, allocate=alloc)
    tracemalloc.start()
    try:
        before = tracemalloc.get_traced_memory()[0]
        with pytest.raises(RemoteProtocolError) as info:
            framer.receive_data(fixed_header(nbytes))          # the fixed part alone suffices
        grown = tracemalloc.get_traced_memory()[1] - before
    finally:
        tracemalloc.stop()
    assert "limit" in str(info.value) and info.value.error_status_hint == 413
    assert alloc.calls == 0 and grown < 64 * 1024
    with pytest.raises(RemoteProtocolError):                   # and the stream stays refused
        framer.receive_data(b"more")


def test_header_at_the_limit_is_accepted():
    framer = ArrayFramer(max_bytes=1024)
    header, payload = encode_array(bytes(1024))
    (event,) = framer.receive_data(header + bytes(payload))
    assert len(event.array) == 1024


def bad_header(**changes) -> bytes:
    header, payload = describe(array.array("h", [1, 2, 3]), b"meta")
    return dataclasses.replace(header, **changes).encode() + bytes(payload)


@pytest.mark.parametrize("wire", [
    b"XRRY" + bytes(22),
    fixed_header(3)[:4] + b"\x02" + fixed_header(3)[5:],                   # version 2
    fixed_header(3, kind=9),
    fixed_header(3, byteorder=b"!"),
    fixed_header(3, order=b"Z"),
    fixed_header(3, ndim=65),
    fixed_header(3, mlen=10**6),
    bad_header(shape=(4,)),                                               # 4 x 2 != 6 bytes
    bad_header(itemsize=0),
    bad_header(kind=KIND_BYTES),                                          # bytes of format 'h'
    bad_header(format="Z"),                                               # no such typecode
    bad_header(format="d"),                                               # item size 8 != 2
    bad_header(order="F"),                                                # Fortran, not NumPy
    bad_header(kind=KIND_NUMPY, format="|O8"),                            # object dtype
    bad_header(kind=KIND_NUMPY, format="import os"),
    bad_header(kind=KIND_BUFFER, format="h h"),
    dataclasses.replace(describe(None)[0], nbytes=5).encode(),            # meta-only with bytes
], ids=["magic", "version", "kind", "byteorder", "order", "ndim", "meta", "shape", "itemsize",
        "bytes-format", "typecode", "typecode-size", "fortran", "object-dtype", "numpy-format",
        "buffer-format", "none-with-bytes"])
def test_bad_headers_are_refused(wire):
    alloc = CountingAllocate()
    framer = ArrayFramer(max_meta=1024, allocate=alloc)
    with pytest.raises(RemoteProtocolError):
        framer.receive_data(wire)
    assert alloc.calls == 0


def test_accept_hook_refuses_before_allocation():
    alloc = CountingAllocate()

    def accept(header):
        if header.meta != b"ok":
            raise RemoteProtocolError("not today")
    framer = ArrayFramer(allocate=alloc, accept=accept)
    header, payload = encode_array(bytes(10), b"ok")
    assert len(framer.receive_data(header + bytes(payload))) == 1
    header, payload = encode_array(bytes(10), b"no")
    with pytest.raises(RemoteProtocolError):
        framer.receive_data(header)
    assert alloc.calls == 1


@pytest.mark.parametrize("obj", [memoryview(bytearray(10))[::2], 42, "text"],
                         ids=["strided", "int", "str"])
def test_what_cannot_be_sent_without_a_copy_is_refused_by_the_sender(obj):
    with pytest.raises(LocalProtocolError):
        describe(obj)


# -- NumPy, when it is installed --------------------------------------------------------------

def numpy_objects(np) -> list:
    return [
        np.arange(12, dtype="<i4").reshape(3, 4),
        np.arange(24, dtype=">f8").reshape(2, 3, 4),                     # the other byte order
        np.asfortranarray(np.arange(6.0).reshape(2, 3)),
        np.arange(5).astype("datetime64[s]"),                            # no buffer format
        np.empty((0, 3)),
        np.array(3.5),                                                   # 0 dimensions
        np.array([1 + 2j, 3 - 4j]),
        np.array([b"ab", b"cde"]),
        np.array([True, False, True]),
    ]


def test_numpy_arrays_round_trip_with_dtype_shape_and_order():
    np = pytest.importorskip("numpy")
    for obj in numpy_objects(np):
        event = roundtrip_core(obj)
        got = event.array
        assert isinstance(got, np.ndarray) and event.header.kind == KIND_NUMPY
        assert got.dtype == obj.dtype and got.shape == obj.shape
        assert got.flags.f_contiguous == obj.flags.f_contiguous
        assert got.tobytes(order="A") == obj.tobytes(order="A")
        assert np.array_equal(got, obj)


def test_numpy_refusals():
    np = pytest.importorskip("numpy")
    for obj in (np.array([object(), 1]), np.arange(10)[::2], np.arange(12).reshape(3, 4)[:, 1:]):
        with pytest.raises(LocalProtocolError):
            describe(obj)


def test_importing_the_array_modules_does_not_import_numpy():
    code = ("import sys, protocols.arrays, apps.arrays; from protocols.arrays import *; "
            "import array; roundtrip = ArrayFramer().receive_data(b''.join("
            "[encode_array(array.array('d', [1.0]))[0], bytes(8)])); "
            "print('numpy' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True,
                         timeout=30)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "False"


# -- the blocking pair -------------------------------------------------------------------------

def test_send_array_recv_array_over_a_socket_pair():
    a, b = socket.socketpair()
    objs = [o for o in plain_objects()] + [array.array("d", range(300_000))]   # 2.4 MB: partial sends
    with a, b:
        sender = threading.Thread(target=lambda: [send_array(a, o, b"m%d" % i)
                                                  for i, o in enumerate(objs)])
        sender.start()
        try:
            for i, obj in enumerate(objs):
                event = recv_frame(b)
                assert event.meta == b"m%d" % i
                assert_same_array(obj, event.array)
        finally:
            sender.join(10)
        send_array(a, array.array("f", [0.5]))
        assert recv_array(b) == array.array("f", [0.5])


def test_recv_frame_reports_eof_before_and_inside_a_frame():
    a, b = socket.socketpair()
    with b:
        a.close()
        with pytest.raises(EOFError, match="connection closed"):
            recv_frame(b)
    a, b = socket.socketpair()
    with b:
        header, payload = encode_array(bytes(100))
        a.sendall(header + bytes(payload[:50]))
        a.close()
        with pytest.raises(EOFError, match="middle"):
            recv_frame(b)


def test_recv_frame_refuses_an_oversized_header():
    a, b = socket.socketpair()
    with a, b:
        a.sendall(encode_array(bytes(2048))[0])
        with pytest.raises(RemoteProtocolError):
            recv_frame(b, max_bytes=1024)


# -- ArrayHandler ------------------------------------------------------------------------------

class Collector(ArrayHandler):
    def __init__(self, sock, address=None):
        super().__init__(sock, address)
        self.frames: list[tuple] = []
        self.lost = None

    def array_received(self, arr, meta):
        self.frames.append((arr, meta))

    def connection_lost(self, exc):
        self.lost = exc if exc is not None else "clean"


def handler_pair(reactor, cls=Collector, family=socket.AF_UNIX):
    a, b = socket.socketpair(family) if family == socket.AF_UNIX else _tcp_pair()
    left, right = cls(a), cls(b)
    reactor.add(left)
    reactor.add(right)
    return left, right


def _tcp_pair():
    from reactor.testing import stream_pair
    return stream_pair(socket.AF_INET)


@pytest.mark.parametrize("family", [socket.AF_UNIX, socket.AF_INET], ids=["unix", "tcp"])
def test_many_arrays_both_ways_on_one_connection(reactor, family):
    left, right = handler_pair(reactor, family=family)
    objs = plain_objects() + [array.array("d", range(200_000)), bytearray(1_500_000)]
    for i, obj in enumerate(objs):
        left.send_array(obj, b"L%d" % i)
        right.send_array(obj, b"R%d" % i)
    run_until(reactor, lambda: len(left.frames) == len(right.frames) == len(objs), timeout=10)
    for side, tag in ((right, b"L"), (left, b"R")):
        for i, (obj, (got, meta)) in enumerate(zip(objs, side.frames)):
            assert meta == tag + b"%d" % i
            assert_same_array(obj, got)


def test_partial_sends_resume_at_the_right_offset(reactor):
    a, b = socket.socketpair()
    a.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 4096)      # many small partial sends
    filled = fill_socket(a)
    sender = ArrayHandler(a)
    reactor.add(sender)
    objs = [array.array("i", range(100_000)), bytearray(range(256)) * 300, b"tail"]
    wire_len = 0
    for obj in objs:
        sender.send_array(obj)
        header, payload = encode_array(obj)
        wire_len += len(header) + payload.nbytes
    assert sender.write_buffer_size == wire_len               # nothing left: the socket is full
    b.setblocking(False)
    got = bytearray()
    while len(got) < filled + wire_len:
        reactor.run_once(0.01)
        try:
            got += b.recv(3000)                              # a slow reader: small bites
        except BlockingIOError:
            pass
    b.close()
    assert got[:filled] == b"x" * filled
    events = ArrayFramer().receive_data(got[filled:])
    assert [received_bytes(e.array) for e in events] == [payload_bytes(o) for o in objs]
    assert sender.write_buffer_size == 0


def test_sending_queues_the_callers_memory_not_a_copy(reactor):
    a, b = socket.socketpair()
    with b:
        fill_socket(a)
        sender = ArrayHandler(a)
        reactor.add(sender)
        obj = array.array("d", range(512 * 1024))                 # 4 MiB
        tracemalloc.start()
        try:
            before = tracemalloc.get_traced_memory()[0]
            sender.send_array(obj)
            sender.send_array(bytearray(obj.tobytes()[:16]))     # a second frame behind it
            grown = tracemalloc.get_traced_memory()[0] - before
        finally:
            tracemalloc.stop()
        assert sender.write_buffer_size > obj.itemsize * len(obj)
        assert grown < 16 * 1024, f"{grown} bytes allocated to queue a 4 MiB array"


def test_a_transfer_holds_no_second_copy_of_the_payload(reactor):
    left, right = handler_pair(reactor)
    obj = array.array("d", range(512 * 1024))                     # 4 MiB
    size = len(obj) * obj.itemsize
    tracemalloc.start()
    try:
        base = tracemalloc.get_traced_memory()[0]
        tracemalloc.reset_peak()
        left.send_array(obj)
        run_until(reactor, lambda: right.frames, timeout=10)
        peak = tracemalloc.get_traced_memory()[1] - base
    finally:
        tracemalloc.stop()
    assert right.frames[0][0] == obj
    # The destination (1x) plus at most one 127 KiB read and small change; a copy of the
    # payload on either side would make it 2x.
    assert peak < size * 1.1, f"peak {peak / size:.2f}x the payload"


class Producer(Collector):
    """Sends numbered arrays while the transport lets it, as a well-behaved producer does."""

    def __init__(self, sock, address=None, total=0, item=None):
        super().__init__(sock, address)
        self.total, self.item, self.sent, self.paused, self.pauses = total, item, 0, False, 0
        self.max_queued = 0

    def connection_made(self):
        self.produce()

    def produce(self):
        while not self.paused and self.sent < self.total:
            self.send_array(self.item, b"%d" % self.sent)
            self.sent += 1
            self.max_queued = max(self.max_queued, self.write_buffer_size)

    def pause_writing(self):
        self.paused, self.pauses = True, self.pauses + 1

    def resume_writing(self):
        self.paused = False
        self.produce()


def test_a_slow_receiver_pauses_the_sender_and_memory_stays_bounded(reactor):
    a, b = socket.socketpair()
    item = array.array("d", range(32 * 1024))                    # 256 KiB each
    nbytes = len(item) * item.itemsize
    producer = Producer(a, total=40, item=item)                  # 10 MiB in all
    receiver = Collector(b)
    reactor.add(receiver)
    receiver.pause_reading()                                     # the slow receiver
    reactor.add(producer)
    for _ in range(20):
        reactor.run_once(0.01)
    assert producer.paused and producer.pauses == 1
    assert producer.sent < producer.total
    assert producer.max_queued <= producer.high_water + nbytes + 4096
    receiver.resume_reading()
    run_until(reactor, lambda: len(receiver.frames) == 40, timeout=10)
    assert [meta for _, meta in receiver.frames] == [b"%d" % i for i in range(40)]
    assert all(arr == item for arr, _ in receiver.frames)
    assert producer.pauses > 1                                  # paused and resumed repeatedly


def test_an_oversized_header_closes_only_that_connection(reactor, caplog):
    a, b = socket.socketpair()
    small = type("Small", (Collector,), {"max_bytes": 1024})
    receiver = small(b)
    reactor.add(receiver)
    with a:
        a.sendall(encode_array(bytes(4096))[0])
        run_until(reactor, lambda: receiver.lost is not None)
    assert receiver.frames == [] and "limit" in caplog.text


def test_eof_inside_a_frame_is_logged_and_closes(reactor, caplog):
    a, b = socket.socketpair()
    receiver = Collector(b)
    reactor.add(receiver)
    header, payload = encode_array(bytes(100_000))
    a.sendall(header + bytes(payload[:70_000]))
    a.close()
    run_until(reactor, lambda: receiver.lost is not None)
    assert receiver.frames == [] and "middle of an array" in caplog.text


def test_meta_only_frames_and_arrays_interleave(reactor):
    left, right = handler_pair(reactor)
    for i in range(50):
        left.send_array(None, b"ping %d" % i)
        left.send_array(array.array("b", [i]))
    run_until(reactor, lambda: len(right.frames) == 100)
    assert right.frames[::2] == [(None, b"ping %d" % i) for i in range(50)]
    assert [arr[0] for arr, _ in right.frames[1::2]] == list(range(50))


def test_arrays_both_ways_over_tls(reactor):
    """Under TLS both ends go through the TLS layer (ciphertext is never the payload's memory):
    the same frames arrive, large ones included."""
    ssl = pytest.importorskip("ssl")
    from reactor import start_tls
    certs = ROOT / "tests" / "certs"
    server_ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    server_ctx.load_cert_chain(str(certs / "server.pem"), str(certs / "server.key"))
    client_ctx = ssl.create_default_context(cafile=str(certs / "ca.pem"))
    a, b = socket.socketpair()
    left, right = Collector(a), Collector(b)
    start_tls(left, client_ctx, server_side=False, server_hostname="localhost")
    start_tls(right, server_ctx, server_side=True)
    reactor.add(left)
    reactor.add(right)
    objs = [array.array("d", range(300_000)), None, b"small", memoryview(bytearray(48)).cast("d", [2, 3])]
    for i, obj in enumerate(objs):
        left.send_array(obj, b"%d" % i)
        right.send_array(obj, b"%d" % i)
    run_until(reactor, lambda: len(left.frames) == len(right.frames) == len(objs), timeout=20)
    for side in (left, right):
        for obj, (got, meta) in zip(objs, side.frames):
            assert_same_array(obj, got)
