"""Scenarios about the data itself: ops replayed after they were applied (a node restored from an old disk copy
pushes them again), and backups whose bytes were tampered with."""

from __future__ import annotations

import os
import shutil
import sqlite3
from pathlib import Path

from ...backup.service import BackupService
from ...compose import LOCAL_DB
from ...errors import BackupError
from ..scenario import RunContext, Scenario, ScenarioResult, Trial


def _snapshot(src: Path, dst: Path) -> int:
    """A consistent copy of a live SQLite file (the backup API); returns how many ops its outbox holds."""
    source = sqlite3.connect(f"file:{src}?mode=ro", uri=True, timeout=5)
    target = sqlite3.connect(dst)
    try:
        source.backup(target)
        (queued,) = target.execute("SELECT count(*) FROM outbox").fetchone()
    finally:
        target.close()
        source.close()
    return int(queued)


class DuplicateReplay(Scenario):
    name = "duplicate_replay"
    summary = (
        "A node's disk is rolled back to a copy taken while its writes were queued (after they were pushed): it "
        "pushes them all again, and the primary must recognise every one as a duplicate, applying none twice."
    )
    min_duration = 3.0

    def run(self, ctx: RunContext) -> ScenarioResult:
        with Trial(ctx, self.name) as t:
            t.open_node("a", write_mode="local_first")
            t.open_node("b")
            assert t.proxy is not None
            proxy = t.proxy
            before, during, after = t.phases()
            copy = ctx.sandbox.dir / self.name / "a-local.db.copy"
            t.start_writers()
            t.sleep(before)
            with t.fault("primary down, disk copy taken"):
                proxy.down()
                t.sleep(during)
                queued = _snapshot(ctx.sandbox.data_dir("a") / LOCAL_DB, copy)
            t.heal()
            t.sleep(after)
            t.stop_writers()
            t.settle()
            t.close_node("a")
            db = ctx.sandbox.data_dir("a") / LOCAL_DB
            for suffix in ("-wal", "-shm"):
                Path(f"{db}{suffix}").unlink(missing_ok=True)
            shutil.copyfile(copy, db)
            os.unlink(copy)
            t.history.mark("disk rolled back")
            a = t.open_node("a", write_mode="local_first")
            t.settle()
            replayed = a.node.replayer.totals.duplicates
            r = t.finish(availability=0.99)
            r.details.update({"ops_in_the_old_copy": queued, "pushed_again_as_duplicates": replayed})
            r.require("the old copy held queued ops", queued > 0, queued)
            r.require("every replayed op was recognised as a duplicate", replayed >= queued, replayed)
            return r


class BackupTamper(Scenario):
    name = "backup_tamper"
    summary = (
        "An encrypted backup is taken while nodes write; copies of it with bytes flipped, cut short or swapped are "
        "all refused by verification, while the untouched backup verifies."
    )
    min_duration = 2.0
    teeth = "puller_skip_page"

    def run(self, ctx: RunContext) -> ScenarioResult:
        rng = ctx.rng(self.name)
        with Trial(ctx, self.name) as t:
            a = t.open_node("a", write_mode="local_first")
            t.open_node("b")
            before, during, after = t.phases()
            t.start_writers()
            t.sleep(before)
            backups = BackupService(
                a.node,
                writer=a.node.router,
                passphrase=f"resilience-{ctx.seed}",
                start=False,
                directory=ctx.sandbox.dir / self.name / "backups",
            )
            backups.update_config(encrypt=True)
            info = backups.create_manual_backup("resilience", "backup_tamper scenario")
            original = Path(info.path).read_bytes()
            tampered = accepted = 0
            with t.fault("tampered copies"):
                copies = max(20, int(10 * during))
                for i in range(copies):
                    data = bytearray(original)
                    kind = i % 3
                    if kind == 0:  # flip a few bits anywhere
                        for _ in range(rng.randint(1, 4)):
                            data[rng.randrange(len(data))] ^= 1 << rng.randrange(8)
                    elif kind == 1:  # cut short
                        del data[rng.randrange(1, len(data)) :]
                    else:  # two spans swapped
                        a_at, b_at = sorted(rng.sample(range(len(data) - 64), 2))
                        data[a_at : a_at + 32], data[b_at : b_at + 32] = data[b_at : b_at + 32], data[a_at : a_at + 32]
                        if data == bytearray(original):
                            continue
                    path = ctx.sandbox.dir / self.name / f"tampered-{i}.hsb"
                    path.write_bytes(bytes(data))
                    tampered += 1
                    try:
                        backups.check_file(path)
                        accepted += 1
                    except BackupError:
                        pass
                    path.unlink()
            verified = True
            try:
                backups.verify_backup(info.id)
            except BackupError:
                verified = False
            t.sleep(after)
            t.stop_writers()
            t.settle()
            r = t.finish(availability=0.99)
            r.details.update({"tampered_copies": tampered, "accepted": accepted, "backup_records": info.records})
            r.require("every tampered copy was refused", tampered > 0 and accepted == 0, f"{accepted}/{tampered}")
            r.require("the untouched backup verifies", verified)
            return r
