"""reactor.workers without forking: both ends of a channel in this process, on one reactor.

The worker's side (WorkerChannel) gets hand-offs and garbage over a real SOCK_SEQPACKET pair; the
parent's side (WorkerPool) runs "workers" that are WorkerChannels on the same reactor (its
_spawn seam), so balancing, backpressure and replacement are tested turn by turn.  Whether a
descriptor that arrived was closed is observed from outside: we send the write end of a pipe,
close our own copy, and the read end sees EOF only once every copy is gone.  Forked workers,
signals and /proc descriptor counts are in tests/apps/test_workers_apps.py.
"""
from __future__ import annotations

import os
import select
import socket
import struct

import pytest

from reactor import StreamHandler
from reactor.testing import recv_exactly, run_until, stream_pair
from reactor.workers import (MAX_FDS, HandoffListener, WorkerChannel, WorkerPool, _encode_handoff,
                             channel_pair, recv_message)


class Echo(StreamHandler):
    def data_received(self, data):
        self.write(data)


def open_fds() -> int:
    return len(os.listdir("/proc/self/fd"))


def pipe_closed(r: int) -> bool:
    """True once every copy of the pipe's write end is closed (EOF on r)."""
    return bool(select.select([r], [], [], 0)[0]) and os.read(r, 1) == b""


@pytest.fixture
def pipe():
    r, w = os.pipe()
    yield r, w
    for fd in (r, w):
        try:
            os.close(fd)
        except OSError:
            pass


@pytest.fixture
def worker(reactor):
    """(parent end, WorkerChannel serving Echo on this reactor)."""
    parent_end, worker_end = channel_pair()
    channel = reactor.add(WorkerChannel(worker_end, Echo))
    yield parent_end, channel
    parent_end.close()


def hand_off(parent_end, sock, addr=("127.0.0.1", 4242)):
    socket.send_fds(parent_end, [_encode_handoff(addr)], [sock.fileno()])
    sock.close()


def test_handed_socket_is_served_and_its_end_reported(reactor, worker):
    parent_end, channel = worker
    client, server = stream_pair(socket.AF_INET)
    with client:
        hand_off(parent_end, server, ("127.0.0.1", 4242))
        run_until(reactor, lambda: channel.adopted == 1)
        [handler] = channel.connections
        assert handler.address == ("127.0.0.1", 4242)
        client.sendall(b"ping")
        run_until(reactor, lambda: handler.bytes_out == 4)
        assert recv_exactly(client, 4) == b"ping"
    run_until(reactor, lambda: not channel.connections)
    parent_end.setblocking(False)
    got = run_until(reactor, lambda: _try_recv(parent_end))
    assert got == (b"C" + struct.pack("!I", 1), [])


def _try_recv(sock):
    try:
        return recv_message(sock)
    except BlockingIOError:
        return None


@pytest.mark.parametrize("case", ["extra-fds", "no-message", "ctrunc", "trunc", "not-a-socket",
                                  "bad-address", "unknown-kind"])
def test_unexpected_descriptors_are_closed(reactor, worker, pipe, case):
    """Whatever is not exactly one hand-off: every descriptor that came is closed, the channel
    stays up, and the next good hand-off is still served."""
    parent_end, channel = worker
    r, w = pipe
    baseline = open_fds()
    if case == "extra-fds":                   # a good hand-off with a stowaway
        client, server = stream_pair(socket.AF_INET)
        socket.send_fds(parent_end, [_encode_handoff(("127.0.0.1", 1))], [server.fileno(), w])
        server.close()
    elif case == "no-message":                # descriptors with an empty message
        socket.send_fds(parent_end, [b""], [w])
    elif case == "ctrunc":                    # more descriptors than fit: MSG_CTRUNC
        socket.send_fds(parent_end, [_encode_handoff(None)], [w] * (MAX_FDS * 3))
    elif case == "trunc":                     # a message longer than any hand-off: MSG_TRUNC
        socket.send_fds(parent_end, [b"H" + b" " * 4000], [w])
    elif case == "not-a-socket":
        socket.send_fds(parent_end, [_encode_handoff(None)], [w])
    elif case == "bad-address":
        socket.send_fds(parent_end, [b"H{not json"], [w])
    else:
        socket.send_fds(parent_end, [b"Zwhat"], [w])
    os.close(w)
    run_until(reactor, lambda: pipe_closed(r))
    if case == "extra-fds":                   # the socket that came with it is refused too
        with client:
            client.settimeout(5)
            assert client.recv(1) == b""
    assert channel.adopted == 0 and channel.refused == 1
    assert open_fds() == baseline - 1         # w is gone, and nothing that arrived stays
    client, server = stream_pair(socket.AF_INET)
    with client:
        hand_off(parent_end, server)
        run_until(reactor, lambda: channel.adopted == 1)
        client.sendall(b"ok")
        run_until(reactor, lambda: any(h.bytes_out for h in channel.connections))
        assert recv_exactly(client, 2) == b"ok"


def test_non_stream_socket_is_refused(reactor, worker):
    parent_end, channel = worker
    baseline = open_fds()
    udp = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    hand_off(parent_end, udp)
    run_until(reactor, lambda: channel.refused == 1)
    assert open_fds() == baseline and channel.adopted == 0


def test_control_channel_refuses_every_descriptor(reactor, pipe):
    """In reuse-port mode the channel has no factory: a hand-off is unexpected there."""
    r, w = pipe
    parent_end, worker_end = channel_pair()
    with parent_end:
        channel = reactor.add(WorkerChannel(worker_end))
        socket.send_fds(parent_end, [_encode_handoff(None)], [w])
        os.close(w)
        run_until(reactor, lambda: pipe_closed(r))
        assert channel.refused == 1


def test_parent_death_is_noticed(reactor):
    parent_end, worker_end = channel_pair()
    gone = []
    reactor.add(WorkerChannel(worker_end, Echo, on_parent_gone=lambda: gone.append(1)))
    parent_end.close()
    run_until(reactor, lambda: gone)


def test_descriptors_still_queued_at_close_are_closed(reactor, pipe):
    r, w = pipe
    parent_end, worker_end = channel_pair()
    with parent_end:
        channel = WorkerChannel(worker_end, Echo)     # never added: nothing reads the queue
        for _ in range(3):
            socket.send_fds(parent_end, [_encode_handoff(None)], [w])
        os.close(w)
        channel.close()
        assert pipe_closed(r)


def test_stopping_worker_closes_what_still_arrives(reactor, worker, pipe):
    parent_end, channel = worker
    r, w = pipe
    channel.stop()
    client, server = stream_pair(socket.AF_INET)
    with client:
        hand_off(parent_end, server)
        socket.send_fds(parent_end, [_encode_handoff(None)], [w])
        os.close(w)
        run_until(reactor, lambda: pipe_closed(r))
        client.settimeout(5)
        assert client.recv(1) == b""
    assert channel.adopted == 0


# -- the parent's side, with in-process workers ------------------------------------------------

class InProcessPool(WorkerPool):
    """Workers are WorkerChannels on the same reactor; `reading[slot]` False leaves a worker's
    channel unread, as a stuck worker would."""

    def __init__(self, reactor, count, **options):
        super().__init__(reactor, count, lambda channel: 0, **options)
        self.ends: dict[int, socket.socket] = {}
        self.channels: dict[int, WorkerChannel] = {}
        self.spawned = 0

    def _spawn(self, slot):
        parent_end, worker_end = channel_pair()
        parent_end.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 4096)   # fills fast
        self.ends[slot] = worker_end
        self.spawned += 1
        return None, parent_end

    channel_class = WorkerChannel

    def serve(self, slot):
        """Start reading slot's channel and report ready."""
        channel = self.channel_class(self.ends[slot], Echo)
        self.channels[slot] = self.reactor.add(channel)
        channel.send_ready()
        return channel


def test_pool_waits_for_every_worker_then_balances_evenly(reactor):
    ready = []
    pool = InProcessPool(reactor, 2, on_ready=lambda: ready.append(1)).start()
    pool.serve(0)
    run_until(reactor, lambda: pool.workers[0].ready)
    assert not ready
    pool.serve(1)
    run_until(reactor, lambda: ready)
    clients = []
    for _ in range(10):
        client, server = stream_pair(socket.AF_INET)
        clients.append(client)
        pool.dispatch(server, ("127.0.0.1", 1))
        assert server.fileno() == -1          # the parent's copy is closed once sent
    run_until(reactor, lambda: sum(c.adopted for c in pool.channels.values()) == 10)
    assert [c.adopted for c in pool.channels.values()] == [5, 5]
    assert pool.outstanding == 10
    for client in clients[:4]:
        client.close()
    run_until(reactor, lambda: pool.outstanding == 6)
    for client in clients[4:]:
        client.close()


class PausableChannel(WorkerChannel):
    """A worker that can stop reading its channel without closing it (as a stuck one does)."""

    paused = False

    def wants_to_receive(self):
        return not self.paused and super().wants_to_receive()

    def pause(self, paused=True):
        self.paused = paused
        self.reactor.update(self)


def test_full_channel_never_blocks_the_acceptor(reactor):
    """A worker that stops reading: its channel fills, hand-offs go to the other one; with both
    stuck, sockets queue up to max_pending and the pool says it has no room; once the workers
    read again every socket is delivered and nothing is lost."""
    pool = InProcessPool(reactor, 2, max_pending=20).start()
    pool.channel_class = PausableChannel
    stuck, free = pool.serve(0), pool.serve(1)
    run_until(reactor, lambda: pool.ready)
    stuck.pause()
    clients = []

    def dispatch():
        client, server = stream_pair()
        clients.append(client)
        pool.dispatch(server, None)

    for _ in range(60):
        dispatch()
        reactor.run_once(0)                   # worker 1 reads; worker 0 does not
    assert pool.workers[0].channel.blocked and not pool.workers[1].channel.blocked
    assert pool.pending == 0 and 0 < pool.workers[0].handed < 30
    run_until(reactor, lambda: free.adopted == pool.workers[1].handed == 60 - pool.workers[0].handed)
    free.pause()                              # now both are stuck
    for _ in range(1000):                     # what the acceptor does: accept while there is room
        if not pool.has_room():
            break
        dispatch()
    assert not pool.has_room() and pool.pending == 20
    assert pool.workers[1].channel.blocked
    stuck.pause(False)
    free.pause(False)
    run_until(reactor, lambda: stuck.adopted + free.adopted == len(clients), timeout=10)
    assert pool.pending == 0 and pool.has_room()
    run_until(reactor, lambda: not any(w.channel.blocked for w in pool.workers))
    for client in clients:
        client.close()


def test_worker_lost_is_replaced_and_its_queue_goes_elsewhere(reactor):
    pool = InProcessPool(reactor, 2).start()
    pool.serve(0)
    pool.serve(1)
    run_until(reactor, lambda: pool.ready)
    dead = pool.channels[0]
    reactor.remove(dead)                      # closes the worker's end: EOF at the parent
    run_until(reactor, lambda: pool.spawned == 3)
    assert pool.workers[0] is not None and not pool.workers[0].ready
    client, server = stream_pair(socket.AF_INET)
    with client:
        pool.dispatch(server, None)           # only worker 1 is ready
        run_until(reactor, lambda: pool.channels[1].adopted == 1)
    pool.serve(0)
    run_until(reactor, lambda: pool.workers[0].ready)
    assert pool.restarts == 1


def test_worker_that_dies_before_ready_fails_the_start(reactor):
    failures = []
    pool = InProcessPool(reactor, 2, on_failure=failures.append).start()
    pool.serve(1)
    pool.ends[0].close()
    run_until(reactor, lambda: failures)
    assert "before it was ready" in failures[0]
    assert pool.spawned == 2                  # not restarted: it would die again


def test_descriptors_a_worker_sends_are_closed(reactor, pipe):
    r, w = pipe
    pool = InProcessPool(reactor, 1).start()
    pool.serve(0)
    run_until(reactor, lambda: pool.ready)
    socket.send_fds(pool.ends[0], [b"C" + struct.pack("!I", 0)], [w, w])
    os.close(w)
    run_until(reactor, lambda: pipe_closed(r))
    assert pool.workers[0].ready


def test_stop_closes_pending_and_reports_stopped(reactor):
    stopped = []
    pool = InProcessPool(reactor, 1).start()     # never ready: every socket stays pending
    client, server = stream_pair(socket.AF_INET)
    with client:
        pool.dispatch(server, None)
        assert pool.pending == 1
        pool.stop(0.1, lambda: stopped.append(1))
        client.settimeout(5)
        assert client.recv(1) == b""
    pool.ends[0].close()                      # the worker exits
    run_until(reactor, lambda: stopped)


def test_handoff_listener_accepts_and_hands_over(reactor):
    pool = InProcessPool(reactor, 2).start()
    pool.serve(0)
    pool.serve(1)
    sock = socket.create_server(("127.0.0.1", 0))
    listener = reactor.add(HandoffListener(sock, pool))
    run_until(reactor, lambda: pool.ready)
    clients = [socket.create_connection(listener.address, timeout=5) for _ in range(4)]
    run_until(reactor, lambda: sum(c.adopted for c in pool.channels.values()) == 4)
    for i, client in enumerate(clients):
        client.sendall(b"%d" % i)
    for i, client in enumerate(clients):
        run_until(reactor, lambda: select.select([client], [], [], 0)[0])
        assert client.recv(1) == b"%d" % i
        client.close()
    [addr] = {h.address[0] for c in pool.channels.values() for h in c.connections}
    assert addr == "127.0.0.1"
