"""The automatic recovery scenario: an outage the node must detect (alert raised), ride out (writes queued), and
recover from by itself (alert resolved, outbox drained), with detection and recovery times."""

from __future__ import annotations

import time

from ...recovery.alerts import Alert
from ...store import HybridStore
from ..scenario import RunContext, Scenario, ScenarioResult, Trial


class AutoRecovery(Scenario):
    name = "auto_recovery"
    summary = (
        "The primary goes down: the node raises the primary_outage alert, keeps writing locally; the primary "
        "returns: the alert is resolved and the outbox drains, with no operator."
    )
    min_duration = 3.0
    alert_wait = 15.0  # seconds, at most, for the alert to be raised or resolved

    def run(self, ctx: RunContext) -> ScenarioResult:
        with Trial(ctx, self.name) as t:
            a = t.open_node("a")
            t.open_node("b", write_mode="local_first")
            assert t.proxy is not None
            proxy = t.proxy
            before, during, after = t.phases()
            t.start_writers()
            t.sleep(before)
            raised: Alert | None = None
            with t.fault("primary down"):
                down_wall = time.time()
                proxy.down()
                deadline = time.monotonic() + max(during, self.alert_wait)
                while raised is None and time.monotonic() < deadline and not ctx.cancel.is_set():
                    raised = _outage_alert(a.recovery.alerts())
                    ctx.wait(0.05)
                t.sleep(down_wall + during - time.time())
            t.heal()
            healed_wall = time.time()
            resolved: Alert | None = None
            deadline = time.monotonic() + max(after, self.alert_wait)
            while time.monotonic() < deadline and not ctx.cancel.is_set():
                alert = _outage_alert(a.recovery.alerts())
                if alert is not None and not alert.active:
                    resolved = alert
                    break
                ctx.wait(0.05)
            drained_at = _wait_drained(ctx, a, self.alert_wait)
            t.sleep(after - (time.time() - healed_wall))
            t.stop_writers()
            t.settle()
            r = t.finish(availability=0.99)
            r.require("primary_outage alert raised", raised is not None)
            r.require("primary_outage alert resolved after the primary returned", resolved is not None)
            r.require("the outbox drained by itself", drained_at is not None)
            if raised is not None:
                r.detection_s = raised.raised_at - down_wall
            if resolved is not None and resolved.resolved_at is not None:
                ends = [resolved.resolved_at - healed_wall] + ([drained_at - healed_wall] if drained_at else [])
                r.recovery_s = max(ends)
            r.details["alert"] = None if raised is None else {"message": raised.message}
            return r


def _outage_alert(alerts: list[Alert]) -> Alert | None:
    found = [x for x in alerts if x.kind == "primary_outage"]
    return max(found, key=lambda x: x.raised_at) if found else None


def _wait_drained(ctx: RunContext, store: HybridStore, timeout: float) -> float | None:
    """The wall time at which the node's outbox was empty (its own workers pushing), or None."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline and not ctx.cancel.is_set():
        if store.status(fresh=True).outbox["depth"] == 0:
            return time.time()
        ctx.wait(0.05)
    return None
