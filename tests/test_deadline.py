"""The watchdog (`tiers.deadline.Watchdog`) shuts a socket down when a guarded call runs past its deadline, which
wakes a call blocked on it; a call that ends in time leaves its socket alone."""

from __future__ import annotations

import socket
from collections.abc import Iterator

import pytest

from hybridstore.tiers.deadline import Watchdog


@pytest.fixture
def watchdog() -> Iterator[Watchdog]:
    w = Watchdog()
    yield w
    w.close()


def test_a_stalled_call_is_woken_by_guard(watchdog: Watchdog) -> None:
    a, b = socket.socketpair()
    with a, b:
        with watchdog.guard(a.fileno(), 0.05):
            assert a.recv(1) == b"", "the peer never answers: the shutdown ends the wait"
        assert watchdog.fired == 1


def test_a_stalled_call_is_woken_by_arm(watchdog: Watchdog) -> None:
    a, b = socket.socketpair()
    with a, b:
        token = watchdog.arm(a.fileno(), 0.05)
        try:
            assert a.recv(1) == b""
        finally:
            watchdog.disarm(token)
        assert watchdog.fired == 1


def test_a_call_that_ends_in_time_leaves_the_socket_alone(watchdog: Watchdog) -> None:
    a, b = socket.socketpair()
    with a, b:
        for _ in range(3):
            with watchdog.guard(a.fileno(), 0.5):
                b.sendall(b"x")
                assert a.recv(1) == b"x"
            token = watchdog.arm(a.fileno(), 0.5)
            b.sendall(b"y")
            assert a.recv(1) == b"y"
            watchdog.disarm(token)
        # A later guarded call outlives the earlier deadlines: only its own can fire, and it does.
        with watchdog.guard(a.fileno(), 1.0):
            assert a.recv(1) == b""
        assert watchdog.fired == 1
