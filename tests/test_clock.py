"""The hybrid logical clock: total order, monotonicity, causality, text encoding."""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from hybridstore.clock import MAX_DRIFT_MS, HybridClock, Timestamp

nodes = st.from_regex(r"[A-Za-z0-9_\-]{1,12}", fullmatch=True)
stamps = st.builds(Timestamp, st.integers(0, 16**12 - 2**40), st.integers(0, 16**6 - 1), nodes)


@given(stamps, stamps)
def test_text_order_is_tuple_order(a: Timestamp, b: Timestamp) -> None:
    assert (a.encode() < b.encode()) == (a < b)
    assert (a.encode() == b.encode()) == (a == b)
    assert Timestamp.decode(a.encode()) == a


@given(st.lists(st.integers(0, 5), min_size=1, max_size=200))
def test_now_strictly_increases_even_when_wall_clock_stalls_or_goes_back(steps: list[int]) -> None:
    wall = [1_000_000]

    def clock() -> int:
        return wall[0]

    hlc = HybridClock("n1", clock=clock)
    previous = ""
    for step in steps:
        wall[0] += step - 2  # sometimes backwards
        stamp = hlc.now()
        assert stamp > previous
        previous = stamp


@given(stamps)
def test_observe_orders_next_stamp_after_remote(remote: Timestamp) -> None:
    hlc = HybridClock("local", clock=lambda: remote.wall + 5)
    hlc.observe(remote.encode())
    assert hlc.now() > remote.encode()


def test_observe_ignores_stamps_far_in_the_future() -> None:
    hlc = HybridClock("a", clock=lambda: 1_000)
    far = Timestamp(1_000 + MAX_DRIFT_MS + 10, 0, "b").encode()
    hlc.observe(far)
    assert hlc.now() < far


def test_restart_continues_after_last_stamp() -> None:
    first = HybridClock("a", clock=lambda: 500)
    last = first.now()
    again = HybridClock("a", clock=lambda: 100, last=last)  # wall clock went back across the restart
    assert again.now() > last


def test_ties_break_by_node() -> None:
    a = HybridClock("a", clock=lambda: 7).now()
    b = HybridClock("b", clock=lambda: 7).now()
    assert a < b
