"""The lock conntrack and the flowtable use to get events out: calls queued under it run after the release."""

from __future__ import annotations

import threading

import pytest

from runtime.deferred import DeferringLock


def test_a_call_queued_under_the_lock_runs_after_the_outermost_release() -> None:
    lock = DeferringLock()
    ran: list[tuple[str, bool]] = []
    with lock:
        with lock:
            lock.defer(lambda: ran.append(("inner", lock.held())))
        assert ran == [], "not while the lock is held, not even after an inner release"
        assert lock.pending() == 1
    assert ran == [("inner", False)]
    lock.defer(lambda: ran.append(("unlocked", lock.held())))
    assert ran[-1] == ("unlocked", False), "without the lock held: at once"


def test_another_thread_can_take_the_lock_while_a_call_runs() -> None:
    lock = DeferringLock()
    took: list[bool] = []

    def other() -> None:
        with lock:
            took.append(True)

    def call() -> None:
        t = threading.Thread(target=other, daemon=True)  # blocked for good if the lock were still held
        t.start()
        t.join(10)

    with lock:
        lock.defer(call)
    assert took == [True]


def test_calls_queued_by_a_call_follow_it_in_order_and_a_failing_one_does_not_stop_the_rest(
        caplog: pytest.LogCaptureFixture) -> None:
    lock = DeferringLock()
    log: list[str] = []

    def first() -> None:
        log.append("first begin")
        with lock:
            lock.defer(lambda: log.append("queued by first"))
        log.append("first end")

    def broken() -> None:
        raise RuntimeError("listener bug")

    with lock:
        lock.defer(first)
        lock.defer(broken)
        lock.defer(lambda: log.append("last"))
    assert log == ["first begin", "first end", "last", "queued by first"]
    assert "listener bug" in caplog.text


def test_each_thread_delivers_what_it_queued() -> None:
    lock = DeferringLock()
    where: list[str] = []
    with lock:
        lock.defer(lambda: where.append(threading.current_thread().name))

        def other() -> None:
            with lock:
                lock.defer(lambda: where.append(threading.current_thread().name))

        t = threading.Thread(target=other, name="other")
        t.start()
    t.join(10)
    assert sorted(where) == sorted([threading.current_thread().name, "other"])
