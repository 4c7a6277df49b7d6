"""apps.arrays as users run it (`python -m apps.arrays --port 0`), driven by its blocking client:
put/get/list/delete byte-exactly for several types, limits refused from the header, and a
graceful SIGTERM."""
from __future__ import annotations

import array
import json
import socket

import pytest

from apps.arrays import ArrayClient, ArrayStore, ArrayStoreError, make_handler
from protocols.arrays import encode_array, recv_frame, send_array
from tests.apps import _proc


@pytest.fixture(scope="module")
def store():
    """One store process for the module's round trips (and its address)."""
    proc, (endpoint,) = _proc.start("arrays", "--max-bytes", str(16 << 20))
    yield endpoint
    assert _proc.stop(proc) == 0, proc.stderr_text


def bytes_of(obj) -> bytes:
    numpy = __import__("sys").modules.get("numpy")
    if numpy is not None and isinstance(obj, numpy.ndarray):
        return obj.tobytes(order="A")
    return bytes(memoryview(obj).cast("B"))


def test_listening_line_names_the_service(store):
    assert store.scheme == "tcp" and store.service == "arrays"


@pytest.mark.parametrize("obj", [
    b"some bytes",
    bytearray(range(256)),
    b"",
    array.array("d", [1.5, -2.5, 1e300]),
    array.array("i", range(250_000)),                      # 1 MB
    memoryview(bytearray(range(48))).cast("h", [4, 6]),
], ids=["bytes", "bytearray", "empty", "doubles", "ints-1MB", "2d-buffer"])
def test_put_get_round_trip(store, obj):
    with ArrayClient(store.address, timeout=10) as client:
        client.put("x", obj)
        got = client.get("x")
    assert bytes_of(got) == bytes_of(obj)
    if isinstance(obj, array.array):
        assert got == obj
    if isinstance(obj, memoryview):
        assert (got.format, got.shape) == (obj.format, obj.shape)


def test_numpy_round_trips_through_a_store_that_never_looks_inside(store):
    np = pytest.importorskip("numpy")
    obj = np.asfortranarray(np.arange(24, dtype=">i8").reshape(4, 6))
    with ArrayClient(store.address, timeout=10) as client:
        client.put("np", obj)
        got = client.get("np")
        listed = client.list()["np"]
    assert got.dtype == obj.dtype and got.shape == obj.shape and np.array_equal(got, obj)
    assert got.flags.f_contiguous
    assert listed == {"kind": "numpy", "format": ">i8", "shape": [4, 6], "nbytes": 192}


def test_list_delete_and_missing_names(store):
    with ArrayClient(store.address, timeout=10) as client:
        client.put("a", array.array("f", [1.0, 2.0]))
        client.put("b", b"xyz")
        listed = client.list()
        assert listed["a"] == {"kind": "array", "format": "f", "shape": [2], "nbytes": 8}
        assert listed["b"] == {"kind": "bytes", "format": "B", "shape": [3], "nbytes": 3}
        client.delete("a")
        assert "a" not in client.list()
        with pytest.raises(KeyError):
            client.get("a")
        with pytest.raises(KeyError):
            client.delete("a")
        client.put("b", b"replaced")
        assert client.get("b") == bytearray(b"replaced")


def test_one_client_puts_another_gets(store):
    big = array.array("d", range(1 << 20))                 # 8 MiB
    with ArrayClient(store.address, timeout=20) as writer, \
            ArrayClient(store.address, timeout=20) as reader:
        writer.put("big", big)
        assert reader.get("big") == big
        assert reader.get("big") == big                    # sent again from the same memory


def test_a_bad_command_is_answered_and_the_connection_goes_on(store):
    with socket.create_connection(store.address, timeout=10) as sock:
        for meta in (b"not json", b'{"op": "explode"}', b'{"op": "get", "name": ""}',
                     b'{"op": "put", "name": "x"}'):
            send_array(sock, None, meta)
            reply = json.loads(recv_frame(sock).meta)
            assert reply["ok"] is False and reply["error"]
        send_array(sock, None, b'{"op": "list"}')
        assert json.loads(recv_frame(sock).meta)["ok"] is True


def test_an_oversized_header_is_refused_and_the_connection_closed(store):
    with socket.create_connection(store.address, timeout=10) as sock:
        header, _ = encode_array(bytes(16 << 20 | 1), b'{"op": "put", "name": "huge"}')
        sock.sendall(header)                                # no payload: refused on the header
        reply = recv_frame(sock)
        assert reply.array is None and "limit" in json.loads(reply.meta)["error"]
        sock.shutdown(socket.SHUT_WR)
        assert sock.recv(1) == b""
    with ArrayClient(store.address, timeout=10) as client:
        assert "huge" not in client.list()


def test_a_payload_on_a_command_that_takes_none_is_refused(store):
    with socket.create_connection(store.address, timeout=10) as sock:
        send_array(sock, b"junk", b'{"op": "get", "name": "a"}')
        reply = json.loads(recv_frame(sock).meta)
        assert reply["ok"] is False and "carries no array" in reply["error"]


def test_the_total_budget_is_enforced_from_the_header():
    with _proc.running("arrays", "--max-total", "1000") as (proc, (endpoint,)):
        with ArrayClient(endpoint.address, timeout=10) as client:
            client.put("a", bytes(600))
            with pytest.raises(ArrayStoreError, match="store full"):
                client.put("b", bytes(600))
        with ArrayClient(endpoint.address, timeout=10) as client:
            assert list(client.list()) == ["a"]
            client.delete("a")
            client.put("b", bytes(600))                     # room again
    assert proc.returncode == 0


def test_a_put_cut_short_gives_its_reservation_back(serve_in_thread, rt):
    store = ArrayStore(max_total=10_000)
    factory = make_handler(store)
    address = serve_in_thread(factory)
    with socket.create_connection(address, timeout=5) as sock:
        header, payload = encode_array(bytes(8000), b'{"op": "put", "name": "cut"}')
        sock.sendall(header + bytes(payload[:100]))
        rt.wait_for(lambda: store.reserved == 8000)
    rt.wait_for(lambda: store.reserved == 0)
    assert store.arrays == {} and store.stored == 0


def test_sigterm_stops_it_with_status_0():
    proc, (endpoint,) = _proc.start("arrays")
    with ArrayClient(endpoint.address, timeout=10) as client:
        client.put("x", b"1")
    assert _proc.stop(proc) == 0


def test_put_get_over_tls():
    ssl = pytest.importorskip("ssl")
    certs = _proc.REPO / "tests" / "certs"
    flags = ("--tls-cert", str(certs / "server.pem"), "--tls-key", str(certs / "server.key"))
    ctx = ssl.create_default_context(cafile=str(certs / "ca.pem"))
    big = array.array("d", range(300_000))                  # 2.4 MB: many records, partial sends
    with _proc.running("arrays", *flags) as (proc, (endpoint,)):
        assert endpoint.scheme == "tls"
        with ArrayClient(endpoint.address, timeout=10, ssl_context=ctx,
                         server_hostname="localhost") as client:
            client.put("big", big)
            client.put("small", b"abc")
            assert client.get("big") == big
            assert client.get("small") == bytearray(b"abc")
            assert set(client.list()) == {"big", "small"}
    assert proc.returncode == 0, proc.stderr_text
