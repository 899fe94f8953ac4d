"""Reading a local backup's lines: the reader threads (one connection each, one shared snapshot) give exactly
the lines one connection gives; the snapshots are one; a held write lock leaves one connection to do it all."""

from __future__ import annotations

import sqlite3
from collections.abc import Iterator
from pathlib import Path

import pytest

import hybridstore
from hybridstore.backup import snapshot
from hybridstore.backup.snapshot import BATCH, _read_snapshots, local_sections


@pytest.fixture
def db(tmp_path: Path) -> Iterator[Path]:
    """A store with more than three ranges of records in one collection, a whole range of them deleted (a
    range with no live line), a second collection and a pending outbox."""
    with hybridstore.open(data_dir=tmp_path, background=False) as store:
        store.set_many("orders", ((f"o{i:05d}", {"n": i, "note": "x" * (i % 50)}) for i in range(3 * BATCH + 123)))
        for i in range(BATCH + 10, 2 * BATCH + 20):
            store.delete("orders", f"o{i:05d}")
        store.set_many("carts", ((f"c{i}", [i, None, "é"]) for i in range(7)))
        yield tmp_path / "local.db"


def lines(db: Path) -> dict[tuple[str, str], tuple[bytes, int]]:
    """Each section's lines and count (how they are cut into batches may differ)."""
    out: dict[tuple[str, str], tuple[bytes, int]] = {}
    for section, batch, count in local_sections(db, []):
        assert batch.count(b"\n") == count
        joined, total = out.get(section, (b"", 0))
        out[section] = joined + batch, total + count
    return out


def test_reader_threads_give_the_lines_one_connection_gives(db: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    threaded = lines(db)
    monkeypatch.setattr(snapshot, "READERS", 0)
    alone = lines(db)
    assert threaded == alone
    assert list(threaded) == [("collection", "carts"), ("collection", "orders"), ("pending", "outbox")]
    assert threaded["collection", "orders"][1] == 2 * BATCH + 113


def test_the_readers_share_one_snapshot(db: Path) -> None:
    with _read_snapshots(db, 2) as (conn, readers):
        assert len(readers) == 2
        writer = sqlite3.connect(db)
        writer.execute("DELETE FROM records WHERE collection = 'carts'")
        writer.commit()
        writer.close()
        for c in (conn, *readers):
            assert c.execute("SELECT count(*) FROM records WHERE collection = 'carts'").fetchone() == (7,)


def test_a_held_write_lock_leaves_one_connection_to_read_it_all(db: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(snapshot, "GATE_TIMEOUT", 0.0)
    expected = lines(db)
    writer = sqlite3.connect(db, isolation_level=None)
    writer.execute("BEGIN IMMEDIATE")
    try:
        with _read_snapshots(db, 2) as (_, readers):
            assert readers == []
        assert lines(db) == expected
    finally:
        writer.execute("ROLLBACK")
        writer.close()


def test_the_primary_builds_the_same_lines_as_the_node(pg_dsn: str, pg_schema: str) -> None:
    """A backup from the primary takes each record's line from the server (`PRIMARY_LINE_COLUMNS`): byte for byte
    what `record_line` makes of the same row, for keys and stamps that need escaping and any float."""
    from hybridstore.backup.snapshot import PRIMARY_LINE_COLUMNS, record_line
    from hybridstore.tiers.primary import PrimaryTier

    tier = PrimaryTier(pg_dsn, schema=pg_schema)
    try:
        tier.ensure_schema()
        keys = ["plain", 'quote"back\\slash', "tab\tnew\nline\r\x01\x1f\x7f", "é 漢字 🙂", "/slash\u2028"]
        with tier._conn() as conn:  # rows as any writer may have left them (origin and hlc are not ours to vet)
            for i, key in enumerate(keys):
                conn.execute(
                    f'INSERT INTO "{pg_schema}".records (collection, key, value, version, hlc, origin, updated_at) '
                    "VALUES ('c', %s, %s::jsonb, %s, %s, %s, to_timestamp(%s))",
                    (key, '{"a": [1, 2.5, "x\\"y"], "b": null}', i + 1, f'h\t{i}"', f"o\\{key}", 1.7e9 + i / 7),
                )
        plain = [r for batch in tier.iter_snapshot(2) for r in batch]
        built = [r for batch in tier.iter_snapshot(2, columns=PRIMARY_LINE_COLUMNS) for r in batch]
    finally:
        tier.close()
    assert len(plain) == len(keys) == len(built)
    for (c, k, v, ver, h, o, u), (c2, k2, line) in zip(plain, built, strict=True):
        assert (c, k) == (c2, k2)
        assert line.encode() == record_line(k, v, ver, h, o, u)
