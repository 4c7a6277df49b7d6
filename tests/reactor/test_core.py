"""The loop itself: interest caching, dispatch order, error isolation, callbacks, signals."""
from __future__ import annotations

import logging
import os
import selectors
import signal
import socket
import threading

import pytest

from reactor import EventHandler, Reactor, StreamHandler
from reactor.testing import run_until


class CountingSelector(selectors.DefaultSelector):
    """The default selector, counting the calls that change interest."""

    def __init__(self):
        super().__init__()
        self.changes = 0

    def register(self, fileobj, events, data=None):
        self.changes += 1
        return super().register(fileobj, events, data)

    def modify(self, fileobj, events, data=None):
        self.changes += 1
        return super().modify(fileobj, events, data)

    def unregister(self, fileobj):
        self.changes += 1
        return super().unregister(fileobj)


class Reading(EventHandler):
    """A recipe-style handler on one socket that always wants to receive."""

    def __init__(self, sock):
        self.sock = sock

    def fileno(self):
        return self.sock.fileno()

    def wants_to_receive(self):
        return True


class Echo(StreamHandler):
    asked = 0
    reports_wants_changes = False          # make the reactor re-read wants after each event

    def data_received(self, data):
        self.write(data)

    def wants_to_receive(self):
        self.asked += 1
        return super().wants_to_receive()


def test_idle_handlers_are_never_asked_and_selector_untouched():
    selector = CountingSelector()
    reactor = Reactor(selector=selector)
    pairs = [socket.socketpair() for _ in range(200)]
    try:
        idle = [reactor.add(Echo(a)) for a, _ in pairs[:-1]]
        active_sock, client = pairs[-1]
        active = reactor.add(Echo(active_sock))
        reactor.run_once(0)
        asked_before = [h.asked for h in idle]
        changes_before = selector.changes
        client.settimeout(5)
        for i in range(100):
            client.sendall(b"ping %d" % i)
            run_until(reactor, lambda: active.bytes_out >= active.bytes_in > 0
                      and active.bytes_in == sum(len(b"ping %d" % j) for j in range(i + 1)))
            assert client.recv(100) == b"ping %d" % i
        assert [h.asked for h in idle] == asked_before          # never polled
        assert selector.changes == changes_before               # interest never re-registered
        assert active.asked >= 100                               # the active one was asked
    finally:
        reactor.close()
        for a, b in pairs:
            b.close()


def test_self_reporting_stream_handler_is_not_reasked_per_event(reactor):
    class Quiet(Echo):
        reports_wants_changes = True

    a, b = socket.socketpair()
    with b:
        h = reactor.add(Quiet(a))
        asked = h.asked
        b.settimeout(5)
        for i in range(50):
            b.sendall(b"x")
            run_until(reactor, lambda: h.bytes_out == i + 1)
            assert b.recv(1) == b"x"
        assert h.asked == asked              # interest never changed, never re-read
        h.pause_reading()                    # a change it reports itself
        reactor.run_once(0)
        assert h.asked == asked + 1 and h._r_mask == 0


def test_update_rereads_wants_from_outside_a_callback(reactor):
    class Gate(EventHandler):
        def __init__(self, sock):
            self.sock, self.open, self.calls = sock, False, 0

        def fileno(self):
            return self.sock.fileno()

        def wants_to_receive(self):
            return self.open

        def handle_receive(self):
            self.calls += 1
            self.sock.recv(100)

    a, b = socket.socketpair()
    with a, b:
        gate = reactor.add(Gate(a))
        b.send(b"x")
        reactor.run_once(0.01)
        assert gate.calls == 0
        gate.open = True
        reactor.run_once(0.01)
        assert gate.calls == 0                 # not re-read without update()
        reactor.update(gate)
        run_until(reactor, lambda: gate.calls == 1)
        reactor.remove(gate)


def test_exception_closes_only_that_handler_and_logs_once(reactor, caplog):
    class Boom(Echo):
        def data_received(self, data):
            raise ValueError("boom")

    lost = []

    class Tracked(Echo):
        def connection_lost(self, exc):
            lost.append(exc)

    (a1, b1), (a2, b2) = socket.socketpair(), socket.socketpair()
    with b1, b2:
        bad = reactor.add(type("BadTracked", (Boom, Tracked), {})(a1))
        good = reactor.add(Echo(a2))
        with caplog.at_level(logging.ERROR):
            b1.send(b"x")
            b2.send(b"y")
            run_until(reactor, lambda: bad not in reactor.handlers and good.bytes_out == 1)
        assert [r for r in caplog.records if "boom" in str(r.exc_info)] and len(
            [r for r in caplog.records if r.levelno >= logging.ERROR]) == 1
        assert len(lost) == 1 and isinstance(lost[0], ValueError)
        b2.settimeout(5)
        assert b2.recv(10) == b"y"
        b2.send(b"z")
        run_until(reactor, lambda: good.bytes_out == 2)
        assert b2.recv(10) == b"z"


def test_handle_close_runs_once_whatever_the_path(reactor):
    closes = []

    class H(Reading):
        def handle_close(self):
            closes.append(self)
            self.sock.close()

    a, b = socket.socketpair()
    with b:
        h = reactor.add(H(a))
        h.close()
        h.close()
        reactor.remove(h)
        reactor.close()
    assert closes == [h]


def test_handler_removed_earlier_in_the_turn_is_not_dispatched(reactor):
    calls = []

    class H(Reading):
        def __init__(self, sock, name):
            super().__init__(sock)
            self.name, self.victim = name, None

        def handle_receive(self):
            calls.append(self.name)
            self.sock.recv(10)
            if self.victim is not None:
                reactor.remove(self.victim)

    (a1, b1), (a2, b2) = socket.socketpair(), socket.socketpair()
    with a1, b1, a2, b2:
        h1, h2 = reactor.add(H(a1, "one")), reactor.add(H(a2, "two"))
        h1.victim, h2.victim = h2, h1
        b1.send(b"x")
        b2.send(b"x")
        run_until(reactor, lambda: calls)
        reactor.run_once(0)
        assert len(calls) == 1


def test_stale_descriptor_is_evicted_when_the_number_is_reused(reactor, caplog):
    class Careless(Reading):                      # closes its socket but never leaves
        pass

    a, b = socket.socketpair()
    stale = reactor.add(Careless(a))
    fd = a.fileno()
    a.close()
    b.close()
    c, d = socket.socketpair()
    with c, d:
        assert fd in (c.fileno(), d.fileno())
        new = reactor.add(Careless(c if c.fileno() == fd else d))
        assert stale not in reactor.handlers and new in reactor.handlers


def test_duck_typed_handler_without_our_base_class(reactor):
    got = []

    class Plain:                                  # the recipe's own base, not ours
        def __init__(self, sock):
            self.sock = sock

        def fileno(self):
            return self.sock.fileno()

        def wants_to_receive(self):
            return True

        def wants_to_send(self):
            return False

        def handle_receive(self):
            got.append(self.sock.recv(10))

        def handle_send(self):
            pass

    a, b = socket.socketpair()
    with a, b:
        reactor.add(Plain(a))
        b.send(b"hi")
        run_until(reactor, lambda: got)
        assert got == [b"hi"]


def test_call_soon_order_and_no_starvation(reactor):
    order = []

    def again(n):
        order.append(n)
        reactor.call_soon(again, n + 1)     # queues for the next turn, never loops forever

    reactor.call_soon(order.append, "a")
    reactor.call_soon(order.append, "b")
    reactor.call_soon(again, 0)
    reactor.run_once(0)
    assert order == ["a", "b", 0]
    reactor.run_once(0)
    assert order == ["a", "b", 0, 1]


def test_call_soon_threadsafe_from_many_threads_runs_each_exactly_once(rt):
    threads, per_thread = 8, 5000
    seen: dict[int, list[int]] = {t: [] for t in range(threads)}

    def producer(t):
        for i in range(per_thread):
            rt.reactor.call_soon_threadsafe(seen[t].append, i)

    workers = [threading.Thread(target=producer, args=(t,)) for t in range(threads)]
    for w in workers:
        w.start()
    for w in workers:
        w.join(30)
    rt.wait_for(lambda: sum(map(len, seen.values())) == threads * per_thread, timeout=30)
    assert all(seen[t] == list(range(per_thread)) for t in range(threads))


def test_signal_handler_runs_on_the_reactor(reactor):
    got = []
    reactor.add_signal_handler(signal.SIGUSR1, got.append, "usr1")
    try:
        os.kill(os.getpid(), signal.SIGUSR1)
        run_until(reactor, lambda: got)
        assert got == ["usr1"]
    finally:
        assert reactor.remove_signal_handler(signal.SIGUSR1)
    assert signal.getsignal(signal.SIGUSR1) == signal.SIG_DFL


def test_a_signal_caught_on_another_thread_wakes_an_idle_reactor(reactor):
    """The lost wake-up behind a SIGTERM that did not stop an idle server: the C-level handler
    ran on a thread other than the one blocked in epoll_wait (or just before it entered it), so
    nothing interrupted the poll, and the Python handler waited for an event that never came."""
    got, fallback = [], []

    def on_usr1() -> None:
        got.append("usr1")
        reactor.stop()

    def give_up() -> None:          # a bound on the test, not a synchronisation
        fallback.append(True)
        reactor.stop()

    running = threading.Event()

    def signal_from_this_thread() -> None:
        running.wait(10)
        running.wait(0.1)           # let the main thread get into the poll (no timer wakes it)
        signal.pthread_kill(threading.get_ident(), signal.SIGUSR1)

    reactor.add_signal_handler(signal.SIGUSR1, on_usr1)
    try:
        reactor.call_soon(running.set)
        timer = reactor.call_later(10, give_up)
        thread = threading.Thread(target=signal_from_this_thread)
        thread.start()
        reactor.run()
        thread.join(10)
        timer.cancel()
        assert (got, fallback) == (["usr1"], [])
    finally:
        assert reactor.remove_signal_handler(signal.SIGUSR1)
    assert signal.set_wakeup_fd(-1) == -1       # the wake-up descriptor was given back


def test_stop_from_a_callback_and_run_returns(reactor):
    reactor.call_later(0.01, reactor.stop)
    reactor.run()
    assert not reactor._running


def test_stats_counts_what_happened(reactor):
    a, b = socket.socketpair()
    with b:
        h = reactor.add(Echo(a))
        b.send(b"12345")
        run_until(reactor, lambda: h.bytes_out == 5)
        stats = reactor.stats()
        assert stats["handlers"] == 1 and stats["bytes_in"] == 5 and stats["bytes_out"] == 5
        assert stats["turns"] >= 1 and stats["events"] >= 1 and stats["slowest_callback"]
        assert reactor.stats()["slowest_callback"] == ""          # reset per interval
        h.close()                              # lingers until the peer's FIN
        b.close()
        run_until(reactor, lambda: reactor.stats()["handlers"] == 0)
        assert reactor.stats()["bytes_out"] == 5                  # kept after close


def test_closed_reactor_refuses_handlers():
    r = Reactor()
    r.close()
    a, b = socket.socketpair()
    with a, b, pytest.raises(RuntimeError):
        r.add(Echo(a))


def test_forget_after_fork_closes_the_childs_copies_and_leaves_the_parent_registered(reactor):
    """A forked child closes its copies of the reactor's descriptors without EPOLL_CTL_DEL:
    the parent's registrations (shared epoll instance) must keep working."""
    from reactor.testing import stream_pair

    class Reader(EventHandler):
        def __init__(self, sock):
            self.sock, self.got = sock, b""

        def fileno(self):
            return self.sock.fileno()

        def wants_to_receive(self):
            return True

        def handle_receive(self):
            self.got += self.sock.recv(100)

    ours, theirs = stream_pair("tcp")
    h = reactor.add(Reader(ours))
    reactor.run_once(0)
    fds = [ours.fileno(), reactor._selector.fileno()]
    rfd, wfd = os.pipe()
    pid = os.fork()
    if pid == 0:                                  # the child: report which fds are still open
        try:
            reactor.forget_after_fork()
            still = [fd for fd in fds if _is_open(fd)]
            os.write(wfd, repr(still).encode())
        finally:
            os._exit(0)
    os.close(wfd)
    try:
        report = b""
        while chunk := os.read(rfd, 100):
            report += chunk
    finally:
        os.close(rfd)
        os.waitpid(pid, 0)
    assert report == b"[]"
    theirs.sendall(b"still here")
    run_until(reactor, lambda: h.got == b"still here", timeout=5)
    theirs.close()


def _is_open(fd: int) -> bool:
    try:
        os.fstat(fd)
    except OSError:
        return False
    return True
