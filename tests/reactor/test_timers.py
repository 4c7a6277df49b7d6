"""Timers on a controllable clock: order, cancellation, timers from timers, compaction."""
from __future__ import annotations

import time

from reactor import Reactor
from reactor.testing import FakeClock


def make():
    clock = FakeClock()
    return clock, Reactor(clock=clock)


def test_timers_fire_in_deadline_order_then_fifo():
    clock, r = make()
    fired = []
    r.call_later(3, fired.append, "c")
    r.call_later(1, fired.append, "a1")
    r.call_later(1, fired.append, "a2")
    r.call_later(2, fired.append, "b")
    clock.advance(0.5, r)
    assert fired == []
    clock.advance(1.0, r)
    assert fired == ["a1", "a2"]
    clock.advance(10, r)
    assert fired == ["a1", "a2", "b", "c"]
    r.close()


def test_cancelled_timer_never_fires_and_cancel_is_idempotent():
    clock, r = make()
    fired = []
    t = r.call_later(1, fired.append, "x")
    keep = r.call_later(1, fired.append, "y")
    t.cancel()
    t.cancel()
    assert len(r._timers) == 1 and not t.active and keep.active
    clock.advance(2, r)
    assert fired == ["y"] and not keep.active
    keep.cancel()                       # after firing: harmless
    assert len(r._timers) == 0
    r.close()


def test_timer_scheduled_from_a_timer_runs_on_a_later_turn():
    clock, r = make()
    fired = []

    def first():
        fired.append("first")
        r.call_later(0, fired.append, "second")

    r.call_later(1, first)
    clock.advance(1, r)
    assert fired == ["first"]
    r.run_once(0)
    assert fired == ["first", "second"]
    r.close()


def test_cancel_heavy_workload_compacts_the_heap():
    clock, r = make()
    for _ in range(10):
        timers = [r.call_later(100, lambda: None) for _ in range(1000)]
        for t in timers:
            t.cancel()
        clock.advance(0.001, r)
    assert len(r._timers._heap) < 2000 and len(r._timers) == 0
    r.close()


def test_select_waits_only_until_the_next_timer():
    r = Reactor()
    fired = []
    r.call_later(0.05, fired.append, 1)
    start = time.monotonic()
    r.run_once()                       # no timeout given: must wake for the timer
    while not fired and time.monotonic() - start < 5:
        r.run_once()
    assert fired == [1] and time.monotonic() - start < 2
    r.close()


def test_ready_callbacks_make_select_not_block():
    r = Reactor()
    r.call_later(60, lambda: None)
    got = []
    r.call_soon(got.append, 1)
    start = time.monotonic()
    r.run_once()
    assert got == [1] and time.monotonic() - start < 1
    r.close()
