"""Scenarios whose fault is on the network between the nodes and the primary (the fault proxy): a total outage, a
black hole, a flapping primary, high latency, connections reset in the middle of a commit, and a load test with
an outage in the middle. Two nodes write: ``a`` write-through, ``b`` local-first (every write through the outbox).
"""

from __future__ import annotations

import time
from typing import Any

from ..scenario import RunContext, Scenario, ScenarioResult, Trial


def _two_nodes(t: Trial, **options: Any) -> None:
    t.open_node("a", **options)
    t.open_node("b", write_mode="local_first", **options)


class PrimaryOutage(Scenario):
    name = "primary_outage"
    summary = "The primary refuses every connection for the middle half of the run; writes keep being acknowledged."
    min_duration = 2.0

    def run(self, ctx: RunContext) -> ScenarioResult:
        with Trial(ctx, self.name) as t:
            _two_nodes(t)
            assert t.proxy is not None
            proxy = t.proxy
            t.run_writes_with(proxy.down, "primary down")
            t.settle()
            return t.finish(availability=0.99)


class Blackhole(Scenario):
    name = "blackhole"
    summary = "The primary's network swallows every byte (no answer, no error) for the middle half of the run."
    min_duration = 2.0

    def run(self, ctx: RunContext) -> ScenarioResult:
        with Trial(ctx, self.name) as t:
            _two_nodes(t)
            assert t.proxy is not None
            proxy = t.proxy
            t.run_writes_with(proxy.blackhole, "primary black-holed")
            t.settle()
            r = t.finish(availability=0.99)
            during = r.verdict_data.latency["during"]["p99_ms"] if r.verdict_data else None
            bound = 4 * 500 + 500  # a write waits at most the primary timeout (0.5 s) a few times, never forever
            r.require(f"p99 during the black hole ≤ {bound} ms", during is None or during <= bound, during)
            return r


class FlappingPrimary(Scenario):
    name = "flapping_primary"
    summary = "The primary goes down and up again at random (0.2-0.8 s each) for the middle half of the run."
    min_duration = 4.0  # a fault window of 2 s holds at least two flaps whatever the draws

    def run(self, ctx: RunContext) -> ScenarioResult:
        rng = ctx.rng(self.name)
        with Trial(ctx, self.name) as t:
            _two_nodes(t)
            assert t.proxy is not None
            proxy = t.proxy
            flaps = 0

            def flap() -> None:
                nonlocal flaps
                end = time.monotonic() + t.phases()[1]
                while time.monotonic() < end and not ctx.cancel.is_set():
                    proxy.down()
                    flaps += 1
                    t.sleep(min(rng.uniform(0.2, 0.8), end - time.monotonic()))
                    proxy.restore()
                    t.sleep(min(rng.uniform(0.2, 0.8), end - time.monotonic()))

            t.run_writes_with(flap, "primary flapping", hold=False)
            t.settle()
            r = t.finish(availability=0.99)
            r.require("the primary flapped at least twice", flaps >= 2, flaps)
            return r


class HighLatency(Scenario):
    name = "high_latency"
    summary = "Every answer of the primary arrives 500 ± 200 ms late for the middle half of the run."
    min_duration = 3.0
    timeout = 2.0
    teeth = "puller_skip_page"

    def run(self, ctx: RunContext) -> ScenarioResult:
        with Trial(ctx, self.name) as t:
            _two_nodes(t, primary_timeout=self.timeout)
            assert t.proxy is not None
            proxy = t.proxy

            t.run_writes_with(lambda: proxy.latency(500, 200, direction="downstream"), "500 ± 200 ms latency")
            t.settle()
            r = t.finish(availability=0.99)
            lat = r.verdict_data.latency if r.verdict_data else {}
            during = lat.get("during", {}).get("p99_ms")
            bound = (2 * self.timeout + 0.5) * 1000
            r.require(
                f"p99 during the latency ≤ {bound:.0f} ms (bounded by the timeout)", (during or 0) <= bound, during
            )
            delayed = (r.details.get("proxy") or {}).get("delayed_chunks", 0)
            r.require("the latency was injected (chunks delayed)", delayed > 0, delayed)
            return r


class ResetMidCommit(Scenario):
    name = "reset_mid_commit"
    summary = (
        "Connections to the primary are reset after a random 200-4000 bytes of answers (in the middle of a commit "
        "or of its answer) for the middle half of the run: ambiguous outcomes must never apply a write twice."
    )
    min_duration = 2.0

    def run(self, ctx: RunContext) -> ScenarioResult:
        with Trial(ctx, self.name) as t:
            _two_nodes(t)
            assert t.proxy is not None
            proxy = t.proxy

            t.run_writes_with(
                lambda: proxy.reset_after(200, 4000, direction="downstream"), "connections reset mid-answer"
            )
            t.settle()
            r = t.finish(availability=0.99)
            fired = (r.details.get("proxy") or {}).get("reset_after_bytes", 0)
            r.require("connections were reset", fired > 0, fired)
            return r


class StorageLoad(Scenario):
    name = "storage_load"
    summary = "Twice the baseline write rate on both nodes, with the primary down for the middle third of the run."
    min_duration = 3.0

    def run(self, ctx: RunContext) -> ScenarioResult:
        with Trial(ctx, self.name) as t:
            _two_nodes(t)
            assert t.proxy is not None
            proxy = t.proxy
            target = 2 * ctx.rate
            d = ctx.duration
            started = time.monotonic()
            t.start_writers(rate=target)
            t.sleep(d / 3)
            with t.fault("primary down under load"):
                proxy.down()
                t.sleep(d / 3)
            t.heal()
            t.sleep(d / 3)
            t.stop_writers()
            elapsed = time.monotonic() - started
            t.settle()
            r = t.finish(availability=0.99)
            v = r.verdict_data
            achieved = (v.acknowledged / elapsed / 2) if v else 0.0
            r.details.update({"target_rate": target, "achieved_rate": round(achieved, 1)})
            r.require(
                f"each node sustained ≥ 50% of {target:.0f} writes/s",
                achieved >= 0.5 * target,
                round(achieved, 1),
            )
            return r
