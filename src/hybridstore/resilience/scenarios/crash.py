"""Scenarios that kill node processes with SIGKILL: at random points of their writes, many rounds; and while the
primary is down with the node's SQLite file damaged (the journal and the outbox must hold what was acknowledged).
"""

from __future__ import annotations

import time

from ...compose import LOCAL_DB
from ..process import NodeProcess
from ..scenario import RunContext, Scenario, ScenarioResult, Trial


def _child(t: Trial, name: str, prefix: str, mode: str, **options: object) -> NodeProcess:
    ctx = t.ctx
    return NodeProcess(
        t.history,
        name,
        data_dir=ctx.sandbox.data_dir(name),
        url=t.url,
        schema=ctx.sandbox.schema,
        node_id=ctx.sandbox.node_id(name),
        write_mode=mode,
        rate=ctx.rate,
        prefix=prefix,
        options=options,
    )


class NodeCrash(Scenario):
    name = "node_crash"
    summary = (
        "A node process is killed with SIGKILL at a random point of its writes (write-through and local-first "
        "rounds, the primary flapping meanwhile), then started again, many rounds: every acknowledged write survives."
    )
    min_duration = 4.0

    def run(self, ctx: RunContext) -> ScenarioResult:
        rng = ctx.rng(self.name)
        with Trial(ctx, self.name) as t:
            t.open_node("b")
            t.start_writers()
            assert t.proxy is not None
            proxy = t.proxy
            end = time.monotonic() + ctx.duration
            rounds = 0
            acked_by_tier: dict[str, int] = {}
            with t.fault("SIGKILL rounds"):
                while (time.monotonic() < end or rounds < 2) and not ctx.cancel.is_set():
                    mode = rng.choice(("write_through", "local_first"))
                    child = _child(t, "a", f"a{rounds:03d}", mode)
                    try:
                        child.wait_first_ack()
                        if rng.random() < 0.5:
                            proxy.down()  # the kill lands during an outage, or during the return
                            ctx.wait(rng.uniform(0.0, 0.3))
                            proxy.restore()
                        ctx.wait(rng.uniform(0.05, 0.4))
                    finally:
                        child.kill()
                        proxy.restore()
                    rounds += 1
                    for tier, n in child.tiers.items():
                        acked_by_tier[tier] = acked_by_tier.get(tier, 0) + n
            t.heal()
            t.stop_writers()
            t.open_node("a")  # the killed node, once more, in this process: it pushes what it left queued
            t.settle()
            r = t.finish(availability=0.9)
            r.details.update({"rounds": rounds, "acked_by_tier": acked_by_tier})
            r.require("at least two kills", rounds >= 2, rounds)
            return r


class PrimaryDownLocalCorrupt(Scenario):
    name = "primary_down_local_corrupt"
    summary = (
        "A node process is killed and its SQLite file overwritten with garbage; the primary goes down; the node "
        "starts again and keeps writing (only its journal can take the writes) and is killed again mid-write; the "
        "primary returns: every acknowledged write reaches it and the node rebuilds its local store."
    )
    min_duration = 4.0
    teeth = "journal_no_fsync"

    def run(self, ctx: RunContext) -> ScenarioResult:
        rng = ctx.rng(self.name)
        with Trial(ctx, self.name) as t:
            t.open_node("b", write_mode="local_first")
            assert t.proxy is not None
            proxy = t.proxy
            before, during, after = t.phases()
            t.start_writers()
            child = _child(t, "a", "a0", "write_through")
            tiers: dict[str, int] = {}
            try:
                child.wait_first_ack()
                t.sleep(before)
                with t.fault("SQLite garbage, primary down, node killed twice"):
                    child.kill()
                    tiers.update(child.tiers)
                    db = ctx.sandbox.data_dir("a") / LOCAL_DB
                    db.write_bytes(rng.randbytes(max(db.stat().st_size, 4096)))
                    for suffix in ("-wal", "-shm"):
                        db.with_name(db.name + suffix).unlink(missing_ok=True)
                    proxy.down()
                    # no automatic rebuild in this process: only the journal can take its writes (the rebuild
                    # itself is local_corruption's subject; here the node opened again in-process does it)
                    child = _child(t, "a", "a1", "write_through", auto_recover=False)
                    child.wait_first_ack()
                    t.sleep(during)
                    child.kill()
                    for k, v in child.tiers.items():
                        tiers[k] = tiers.get(k, 0) + v
            finally:
                child.kill()
            t.heal()
            t.sleep(after)
            t.stop_writers()
            t.open_node("a")
            t.settle()
            r = t.finish(availability=0.9)
            r.details["acked_by_tier"] = tiers
            r.require(
                "the journal took writes while SQLite and the primary were both unusable",
                tiers.get("journal", 0) > 0,
                tiers,
            )
            return r
