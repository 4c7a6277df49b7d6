"""apps.kvstore as a user runs it (`python -m apps.kvstore --port 0 [--data PATH]`), with the
standard library's ServerProxy, unchanged, as the client: the recipe's session, faults that
leave the connection up, one kept-alive connection for a whole session, and the journal
surviving SIGKILL in the middle of a stream of writes, a corrupt tail and compaction."""
from __future__ import annotations

import http.client
import signal
import threading
import xmlrpc.client
from xmlrpc.client import Fault, ServerProxy

import pytest

from apps.kvstore import KeyValueStore, make_dispatcher
from protocols.xmlrpc import xmlrpc_factory

from . import _proc


def proxy_for(endpoint: _proc.Endpoint) -> ServerProxy:
    return ServerProxy("http://%s:%d" % endpoint.address, allow_none=True)


def tcp_connections(port: int) -> list[tuple[str, str, str]]:
    """(local, remote, state) of every IPv4 TCP socket on port but the listener, from
    /proc/net/tcp: closed connections linger there in TIME_WAIT, so this counts them too."""
    rows = []
    with open("/proc/net/tcp") as f:
        next(f)
        for row in f:
            local, remote, state = row.split()[1:4]
            ports = {int(local.split(":")[1], 16), int(remote.split(":")[1], 16)}
            if port in ports and state != "0A":          # 0A: LISTEN
                rows.append((local, remote, state))
    return rows


def test_the_recipe_session_over_one_kept_alive_connection():
    with _proc.running("kvstore") as (proc, [endpoint]):
        assert (endpoint.scheme, endpoint.host, endpoint.service) == ("http", "127.0.0.1", "kvstore")
        # an earlier process that had this port number may have left TIME_WAIT sockets on it
        stale = {row[:2] for row in tcp_connections(endpoint.port)}
        with proxy_for(endpoint) as s:
            # Cookbook 11.6, as printed
            s.set('foo', 'bar')
            s.set('spam', [1, 2, 3])
            assert s.keys() == ['foo', 'spam']
            assert s.get('foo') == 'bar'
            assert s.get('spam') == [1, 2, 3]
            s.delete('spam')
            assert s.exists('spam') is False
            # faults, each answered on the same connection
            with pytest.raises(Fault, match="KeyError"):
                s.get('spam')
            with pytest.raises(Fault, match="KeyError"):
                s.delete('spam')
            with pytest.raises(Fault, match="not supported"):
                s._data()
            with pytest.raises(Fault, match="not supported"):
                getattr(s, 'get.__globals__')()
            s.set('none', None)
            assert s.get('none') is None
            assert s.system.listMethods() == sorted(s.system.listMethods())
            assert {"get", "set", "delete", "exists", "keys"} <= set(s.system.listMethods())
            assert "KeyError" in s.system.methodHelp('get')
            multi = xmlrpc.client.MultiCall(s)
            multi.set('a', 1)
            multi.get('a')
            multi.get('nope')
            results = multi()
            assert results[1] == 1
            with pytest.raises(Fault):
                results[2]
            for i in range(50):
                s.set(f'k{i}', i)
            connections = [row for row in tcp_connections(endpoint.port) if row[:2] not in stale]
        assert len(connections) == 2, connections     # both ends of one connection, no other
        assert _proc.stop(proc) == 0


def test_one_accept_for_a_whole_serverproxy_session(serve_in_thread, rt):
    address = serve_in_thread(xmlrpc_factory(make_dispatcher(KeyValueStore())))
    with ServerProxy("http://%s:%d" % address, allow_none=True) as s:
        for i in range(100):
            s.set("k", i)
            with pytest.raises(Fault):
                s.get("missing")
        assert s.get("k") == 99
    assert rt.call(lambda: rt.reactor.stats()["accepts"]) == 1


def value_of(i: int) -> dict:
    return {"i": i, "pad": "x" * (i % 200)}


def writer(endpoint: _proc.Endpoint, acked: list, enough: threading.Event) -> None:
    """set, and now and then delete, until the server dies; acked holds what it confirmed,
    and `enough` is set after 300 confirmations (the writes go on)."""
    try:
        with proxy_for(endpoint) as s:
            i = 0
            while True:
                s.set(f"k{i}", value_of(i))
                acked.append(("set", i))
                if i % 10 == 9:
                    s.delete(f"k{i - 5}")
                    acked.append(("delete", i - 5))
                if len(acked) >= 300:
                    enough.set()
                i += 1
    except (OSError, xmlrpc.client.ProtocolError, http.client.HTTPException):
        pass
    finally:
        enough.set()


def replay(acked: list) -> dict:
    """The store the writer's confirmed calls leave behind."""
    store: dict = {}
    for op, i in acked:
        if op == "set":
            store[f"k{i}"] = value_of(i)
        else:
            store.pop(f"k{i}", None)
    return store


def in_flight(acked: list) -> tuple[str, int]:
    """The call writer() made after its last confirmed one: the one the kill may have cut."""
    op, i = acked[-1]
    if op == "set" and i % 10 == 9:
        return ("delete", i - 5)
    return ("set", i + 1 if op == "set" else i + 6)


def test_the_journal_survives_sigkill_in_the_middle_of_writes(tmp_path):
    data = str(tmp_path / "kv.journal")
    proc, [endpoint] = _proc.start("kvstore", "--data", data)
    acked: list = []
    enough = threading.Event()
    thread = threading.Thread(target=writer, args=(endpoint, acked, enough), daemon=True)
    thread.start()
    try:
        assert enough.wait(30) and len(acked) >= 300     # still writing: the kill lands mid-stream
    finally:
        _proc.stop(proc, signal.SIGKILL)
        thread.join(10)
    assert proc.returncode == -signal.SIGKILL
    assert not thread.is_alive()
    with _proc.running("kvstore", "--data", data) as (proc2, [endpoint2]):
        with proxy_for(endpoint2) as s:
            got = {k: s.get(k) for k in s.keys()}
    # Every confirmed write is there and nothing else, except that the one call in flight at
    # the kill (a set or a delete) may have been journaled without its answer getting back.
    before, after = replay(acked), replay(acked + [in_flight(acked)])
    assert got in (before, after), (in_flight(acked), set(got) ^ set(before))
    assert "WARNING" not in proc2.stderr_text or "cut short" in proc2.stderr_text


def test_a_corrupt_tail_is_reported_and_skipped(tmp_path):
    data = tmp_path / "kv.journal"
    with _proc.running("kvstore", "--data", str(data)) as (proc, [endpoint]):
        with proxy_for(endpoint) as s:
            for i in range(10):
                s.set(f"k{i}", i)
    assert proc.returncode == 0
    good = data.read_bytes()
    data.write_bytes(good + b"\x00\x00\x00\x10garbage from a bad disk" + bytes(100))
    with _proc.running("kvstore", "--data", str(data)) as (proc, [endpoint]):
        with proxy_for(endpoint) as s:
            assert sorted(s.keys()) == sorted(f"k{i}" for i in range(10))
            s.set("after", "repair")
    assert "WARNING" in proc.stderr_text and "skipped" in proc.stderr_text
    assert list(tmp_path.glob("kv.journal.corrupt-*"))
    with _proc.running("kvstore", "--data", str(data)) as (proc, [endpoint]):
        with proxy_for(endpoint) as s:
            assert s.get("after") == "repair" and s.get("k9") == 9
    assert "WARNING" not in proc.stderr_text


def test_compaction_keeps_the_journal_small(tmp_path):
    data = tmp_path / "kv.journal"
    with _proc.running("kvstore", "--data", str(data), "--compact-min", "8192") as (proc, [ep]):
        with proxy_for(ep) as s:
            for i in range(600):
                s.set(f"k{i % 5}", "v" * 100 + str(i))
            assert data.stat().st_size < 2 * 8192 + 1024
    with _proc.running("kvstore", "--data", str(data)) as (proc, [ep]):
        with proxy_for(ep) as s:
            assert {k: s.get(k) for k in s.keys()} == {
                f"k{j}": "v" * 100 + str(595 + j) for j in range(5)}


def test_a_second_server_on_the_same_journal_is_refused(tmp_path):
    data = str(tmp_path / "kv.journal")
    with _proc.running("kvstore", "--data", data):
        with pytest.raises(RuntimeError, match="in use"):
            _proc.start("kvstore", "--data", data)

