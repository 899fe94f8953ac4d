"""The sync conflicts scenario: three nodes cut off from the primary write the same few keys, under each conflict
strategy, then the primary returns and every conflict is settled by its strategy."""

from __future__ import annotations

from random import Random

from ...store import HybridStore
from ...worker import Worker
from ..history import History
from ..scenario import RunContext, Scenario, ScenarioResult, Trial
from ..workload import observe, record

STRATEGIES = {"lw": "last_wins", "mg": "merge", "mn": "manual"}
KEYS = 4


class ConflictWriter:
    """Writes the shared keys of the three strategy collections: ``lw`` and ``mn`` plain values, ``mg`` a
    read-modify-write of the node's own counter field (``{node: n}``, n growing), so a merge must keep each node's
    newest counter."""

    def __init__(self, history: History, store: HybridStore, name: str, rng: Random, rate: float) -> None:
        self.history, self.store, self.name, self.rng, self.rate = history, store, name, rng, rate
        self.n = 0
        self.worker = Worker(f"resilience-conflicts-{name}", self._round)

    def start(self) -> ConflictWriter:
        self.worker.start()
        return self

    def stop(self) -> None:
        self.worker.stop(60)

    def _round(self) -> float:
        self.n += 1
        collection = self.rng.choice(tuple(STRATEGIES))
        key = f"k{self.rng.randrange(KEYS)}"
        if collection == "mg":
            current = self.store.get(collection, key)
            value = dict(current.value) if current is not None and isinstance(current.value, dict) else {}
            value[self.name] = self.n
        else:
            value = {"w": self.name, "n": self.n}
        record(self.history, self.store, self.name, collection, key, value)
        if self.n % 7 == 0:
            observe(self.history, self.store, self.name, collection, key)
        return 1.0 / self.rate


class SyncConflicts(Scenario):
    name = "sync_conflicts"
    summary = (
        "Three nodes cut off from the primary write the same keys (last_wins, merge and manual collections); when "
        "the primary returns, last_wins keeps the newest write, merge keeps every node's change, manual queues the "
        "conflicts for an admin — and every node converges."
    )
    min_duration = 3.0
    teeth = "puller_skip_page"

    def run(self, ctx: RunContext) -> ScenarioResult:
        strategies = {c: s for c, s in STRATEGIES.items() if s != "last_wins"}
        with Trial(ctx, self.name) as t:
            t.rules = dict(STRATEGIES)  # type: ignore[arg-type]
            for name in ("a", "b", "c"):
                t.open_node(name, write_mode="local_first", conflict_strategies=strategies)
            assert t.proxy is not None
            proxy = t.proxy
            before, during, after = t.phases()
            writers = [
                ConflictWriter(t.history, store, name, ctx.rng(f"{self.name}/{name}"), ctx.rate / 4).start()
                for name, store in t.nodes.items()
            ]
            try:
                t.sleep(before)
                with t.fault("nodes cut off from the primary"):
                    proxy.down()
                    t.sleep(during)
                t.heal()
                t.sleep(after)
            finally:
                for w in writers:
                    w.stop()
            t.settle()
            counts = {
                strategy: sum(s.node.replayer.conflicts_resolved.get(strategy, 0) for s in t.nodes.values())
                for strategy in ("merge",)
            }
            rows = ctx.sandbox.execute("SELECT strategy, count(*) FROM {schema}.conflicts GROUP BY strategy")
            r = t.finish(availability=0.99)
            recorded = {strategy: n for strategy, n in rows}
            r.details.update({"conflicts_on_primary": recorded, "merged_by_nodes": counts})
            r.require("manual conflicts were queued for an admin", recorded.get("manual", 0) > 0, recorded)
            r.require("merge conflicts were merged", counts["merge"] > 0 or recorded.get("merge", 0) > 0, counts)
            return r
