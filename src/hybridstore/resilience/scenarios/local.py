"""Scenarios that damage a node's own storage: its SQLite file garbled while it runs (the node must notice and
rebuild itself, losing nothing), and its disk full (writes must be refused openly, never acknowledged and lost)."""

from __future__ import annotations

import time

from ...compose import LOCAL_DB
from ...recovery.probes import quick_check
from ..damage import SmallDisk, checkpoint, garble_pages
from ..scenario import RunContext, Scenario, ScenarioResult, Trial


class LocalCorruption(Scenario):
    name = "local_corruption"
    summary = (
        "A quarter of the records pages of a running node's SQLite file are overwritten with random bytes: the node "
        "detects it, rebuilds its local store from the primary, and loses no acknowledged write."
    )
    min_duration = 3.0
    rebuild_wait = 20.0
    damage_settle = 1.0  # seconds the node gets to notice one round of damage before it is checked again

    def run(self, ctx: RunContext) -> ScenarioResult:
        rng = ctx.rng(self.name)
        with Trial(ctx, self.name) as t:
            a = t.open_node("a", write_mode="local_first", quick_check_interval=0.3)
            t.open_node("b")
            before, during, after = t.phases()
            t.start_writers()
            t.sleep(before)
            rebuild: dict[str, object] | None = None
            with t.fault("SQLite file garbled"):
                db = ctx.sandbox.data_dir("a") / LOCAL_DB
                start = time.time()
                deadline = time.monotonic() + max(during, self.rebuild_wait)
                damaged_at, pages, rounds, checkpointed = start, 0, 0, True
                next_look = 0.0
                while time.monotonic() < deadline and not ctx.cancel.is_set():
                    events = [e for e in a.recovery.events() if e["strategy"] == "rebuild_local"]
                    if events and events[0]["outcome"] != "running":
                        rebuild = events[0]
                        break
                    if not events and time.monotonic() >= next_look and (rounds == 0 or quick_check(db) == ["ok"]):
                        # The garbled pages can be healed by SQLite itself before anyone reads them: a page the
                        # node rewrites gets a newer copy in the WAL, which the next checkpoint writes over the
                        # damage. Damage that did not stick is done again, so the node faces a damaged file.
                        checkpointed = checkpoint(db) and checkpointed
                        damaged_at = time.time()
                        pages += garble_pages(db, "records", 0.25, rng)
                        rounds += 1
                        next_look = time.monotonic() + self.damage_settle
                    ctx.wait(0.05)
                t.sleep(start + during - time.time())
            t.heal()
            t.sleep(after)
            t.stop_writers()
            t.settle()
            r = t.finish(availability=0.99)
            r.details.update({"pages_garbled": pages, "damage_rounds": rounds, "wal_checkpointed": checkpointed})
            r.require("the node rebuilt its local store", rebuild is not None and rebuild["outcome"] == "succeeded")
            if rebuild is not None:
                started = float(rebuild["started_at"])  # type: ignore[arg-type]
                r.detection_s = started - damaged_at
                ended = rebuild.get("ended_at")
                r.recovery_s = None if ended is None else float(ended) - started  # type: ignore[arg-type]
                r.details["rebuild"] = {k: rebuild.get(k) for k in ("summary", "outcome", "seconds")}
            return r


class DiskFull(Scenario):
    name = "disk_full"
    summary = (
        "A node's data directory is on a size-limited file system that fills up while the primary is down: SQLite and "
        "then the journal run out of space; writes must be refused with an error, never acknowledged and lost; "
        "once space is freed and the primary returns, everything converges."
    )
    min_duration = 3.0
    value_bytes = 2000

    def disk_bytes(self, ctx: RunContext) -> int:
        """Room for what the node writes after the space is freed (values, SQLite's WAL pages: ~12 KiB a write)
        and then some: the scenario is about one full disk, not about the workload filling it again."""
        return max(16 << 20, int(ctx.duration * ctx.rate * 16 * 1024))

    def run(self, ctx: RunContext) -> ScenarioResult:
        disk = SmallDisk(ctx.sandbox.data_dir("a"), self.disk_bytes(ctx))
        if not disk.available:
            r = ScenarioResult(self.name, error=f"skipped: {disk.why_not}")
            r.details["skipped"] = disk.why_not
            return r
        try:
            with Trial(ctx, self.name) as t:
                t.open_node("a", write_mode="local_first")
                t.open_node("b")
                assert t.proxy is not None
                proxy = t.proxy
                before, during, after = t.phases()
                t.start_writers(value_bytes=self.value_bytes)
                t.sleep(before)
                with t.fault("primary down, disk full"):
                    proxy.down()
                    disk.fill(leave=64 << 10)
                    t.sleep(during)
                    disk.release()
                t.heal()
                t.sleep(after)
                t.stop_writers()
                t.settle()
                r = t.finish(availability=0.0)
                errors = sum(1 for op in t.history.snapshot() if op.outcome == "fail")
                r.details["refused_writes"] = errors
                r.require("the disk filled: some writes were refused with an error", errors > 0, errors)
                return r
        finally:
            disk.close()
