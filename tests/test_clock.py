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


@given(st.integers(0, 300), st.integers(-3, 3), st.integers(0, 16**6 - 1))
def test_now_many_is_n_calls_of_now_at_one_wall_time(n: int, skew: int, counter: int) -> None:
    """A batch of stamps is what as many `now` calls return while the wall clock stands still: strictly increasing,
    after every stamp made before (the counter carrying into the next millisecond), and the next `now` after it."""
    last = Timestamp(1_000_000, counter, "n1").encode()
    bulk = HybridClock("n1", clock=lambda: 1_000_000 + skew, last=last)
    single = HybridClock("n1", clock=lambda: 1_000_000 + skew, last=last)
    before = bulk.now()
    assert single.now() == before
    stamps = bulk.now_many(n)
    assert stamps == [single.now() for _ in range(n)]
    assert sorted(set(stamps)) == stamps and all(s > before for s in stamps)
    assert bulk.now() == single.now() > (stamps[-1] if stamps else before)


def test_now_many_keeps_the_drift_guard_and_follows_observed_stamps() -> None:
    wall = [5_000_000]
    hlc = HybridClock("n1", clock=lambda: wall[0])
    ahead = Timestamp(wall[0] + 1000, 7, "n2").encode()
    hlc.observe(ahead)  # within the guard: adopted
    assert all(s > ahead for s in hlc.now_many(3))
    broken = Timestamp(wall[0] + MAX_DRIFT_MS + 10_000, 0, "n3").encode()
    hlc.observe(broken)  # beyond the guard: refused, the batch does not jump to it
    stamps = hlc.now_many(1000)
    assert Timestamp.decode(stamps[-1]).wall == wall[0] + 1000 and stamps[-1] < broken
    wall[0] += 5000  # the wall clock moves past the adopted stamp: the batch starts at it, counter 0
    assert hlc.now_many(2) == [Timestamp(wall[0], c, "n1").encode() for c in (0, 1)]
    assert hlc.now_many(0) == []
