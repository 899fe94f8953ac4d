"""Backups: throughput against raw zstd level 3 on the same bytes, with and without encryption; a backup from
the primary against ``pg_dump -Fc`` of the same table; restore rate against the raw local write limit; upload
to and download from the primary against raw psycopg on the same bytes; peak memory.

    python bench/bench_backup.py [--records 500000] [--value-bytes 240] [--rounds 3] [--transfer-only]

Setup: a store on a throwaway schema gets ``--records`` records (about 300 bytes of JSON each, ~150 MB at
500k), pushed to the primary, so the local SQLite copy and the primary's table hold the same data and the
outbox is empty.
(a) backup of the local copy, in a child process (so its RSS can be measured): ``create_manual_backup`` with
    zstd-3, then also AES-256-GCM; the time includes reading SQLite, hashing, compressing, sealing, writing,
    fsync and the full verification before the file is published. MB/s = content bytes (the JSON lines) per
    second. Raw limit: one ``zstandard.ZstdCompressor(level=3)`` compressing exactly the same content bytes,
    already in memory, in the same chunks (1 MiB). Target: >= 0.7 x raw. The child takes two backups and the
    second is timed, as in a running node; the first of a process also pays for scrypt once when encrypting
    (~0.1 s), shown in its own column.
(b) backup from the primary (``source="primary"``) vs ``pg_dump -Fc -t <schema>.records``: time and size.
(c) restore of the backup into an empty embedded store (queued writes: records + outbox rows), records/s, vs
    raw sqlite3 inserting the same rows (value text ready) into a ``records`` and an ``outbox`` table in
    transactions of 1000 rows (WAL, synchronous=NORMAL).
(d) the backup file of (a) (zstd-3) stored on the primary and fetched back, through the gateway as the service
    does: upload = 1 MiB blocks streamed from disk with COPY (binary) and the statement that makes the copy
    visible, in one transaction; download = one SELECT per 4 blocks into a file, fsync, size and SHA-256 checked (and,
    as ``verify_backup`` of a backup only the primary holds pays, plus the full verification). Raw, same bytes,
    same 1 MiB blocks, same table layout (bytea, STORAGE EXTERNAL), a plain psycopg connection:
    ``COPY … FROM STDIN (FORMAT BINARY)`` in one transaction
    and one INSERT per block in one transaction; ``COPY (SELECT …) TO STDOUT (FORMAT BINARY)`` and one
    binary SELECT per block into a file. ``--transfer-only`` runs (d) alone.
Rounds alternate between the cases; the median is reported.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import shutil
import sqlite3
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from _common import DSN, header, pg_schema, print_table, temp_dir, verdict

HERE = Path(__file__).resolve().parent
CHILD = """
import json, sys, time
import hybridstore
def status(field):
    for line in open("/proc/self/status"):
        if line.startswith(field + ":"):
            return int(line.split()[1])
data_dir, dsn, schema, encrypt, source = sys.argv[1:6]
store = hybridstore.open(dsn or None, data_dir=data_dir, primary_schema=schema, background=False)
b = store.backups
b.update_config(encrypt=encrypt == "1", source=source, targets="local")  # (d) measures the upload alone
import zstandard
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
zstandard.ZstdCompressor(level=3).compress(b"x"); AESGCM(bytes(32)).encrypt(bytes(12), b"x", b"")
before = status("VmRSS")
t = time.perf_counter()
first = b.create_manual_backup("bench (first of this process)")
first_s = time.perf_counter() - t
b.delete_backup(first.id)
t = time.perf_counter()
info = b.create_manual_backup("bench")
elapsed = time.perf_counter() - t
print(json.dumps({"s": elapsed, "first_s": first_s, "content": info.content_bytes, "size": info.size_bytes,
                  "path": info.path, "rss_growth_kb": status("VmHWM") - before, "records": info.records,
                  "extra": info.extra, "source": info.source}))
store.close()
"""


def child_backup(data_dir: Path, dsn: str, schema: str, *, encrypt: bool, source: str) -> dict[str, Any]:
    env = dict(os.environ, HYBRIDSTORE_BACKUP_PASSPHRASE="bench passphrase", PYTHONPATH=str(HERE.parent / "src"))
    out = subprocess.run(
        [sys.executable, "-c", CHILD, str(data_dir), dsn, schema, "1" if encrypt else "0", source],
        capture_output=True,
        text=True,
        env=env,
        check=True,
    )
    return dict(json.loads(out.stdout.strip().splitlines()[-1]))


def content_chunks(data_dir: Path) -> tuple[list[bytes], int]:
    """The exact bytes a local backup compresses, in the same 1 MiB chunks (section lines included)."""
    from hybridstore.backup.format import CHUNK_TARGET, section_line
    from hybridstore.backup.snapshot import local_sections

    chunks: list[bytes] = []
    body = 0
    current: tuple[str, str] | None = None
    parts: list[bytes] = []
    size = 0
    for section, lines, _ in local_sections(data_dir / "local.db", []):
        if section != current or size >= CHUNK_TARGET:
            if parts:
                chunks.append(section_line(current) + b"".join(parts))  # type: ignore[arg-type]
            parts, size, current = [], 0, section
        parts.append(lines)
        size += len(lines)
        body += len(lines)
    if parts and current is not None:
        chunks.append(section_line(current) + b"".join(parts))
    return chunks, body


def raw_zstd(chunks: list[bytes]) -> float:
    import zstandard

    cctx = zstandard.ZstdCompressor(level=3, write_checksum=True)
    start = time.perf_counter()
    for c in chunks:
        cctx.compress(c)
    return time.perf_counter() - start


def raw_sqlite_read(db: Path) -> float:
    """The floor of reading the same rows: a plain SELECT of the record columns, 1000 rows per fetch."""
    conn = sqlite3.connect(db)
    start = time.perf_counter()
    cur = conn.execute(
        "SELECT key, value, version, hlc, origin, updated_at FROM records WHERE value IS NOT NULL "
        "ORDER BY collection, key"
    )
    while cur.fetchmany(1000):
        pass
    elapsed = time.perf_counter() - start
    conn.close()
    return elapsed


def raw_sqlite_writes(path: Path, rows: list[tuple[str, str, str]]) -> float:
    conn = sqlite3.connect(path, isolation_level=None)
    conn.execute("PRAGMA journal_mode=WAL").fetchall()
    conn.execute("PRAGMA synchronous=NORMAL")
    conn.executescript(
        "CREATE TABLE records (collection TEXT, key TEXT, value TEXT, hlc TEXT, PRIMARY KEY (collection, key)) "
        "WITHOUT ROWID; CREATE TABLE outbox (seq INTEGER PRIMARY KEY, collection TEXT, key TEXT, value TEXT, hlc TEXT);"
    )
    start = time.perf_counter()
    for i in range(0, len(rows), 1000):
        part = rows[i : i + 1000]
        conn.execute("BEGIN IMMEDIATE")
        conn.executemany("INSERT OR REPLACE INTO records VALUES (?, ?, ?, 'h')", part)
        conn.executemany("INSERT INTO outbox (collection, key, value, hlc) VALUES (?, ?, ?, 'h')", part)
        conn.execute("COMMIT")
    elapsed = time.perf_counter() - start
    conn.close()
    return elapsed


def pg_dump(schema: str, target: Path) -> tuple[float, int]:
    bindir = subprocess.run(["pg_config", "--bindir"], capture_output=True, text=True, check=True).stdout.strip()
    exe = Path(bindir) / "pg_dump"
    start = time.perf_counter()
    subprocess.run([str(exe), "-Fc", "-t", f"{schema}.records", "-f", str(target), DSN], check=True)
    return time.perf_counter() - start, target.stat().st_size


BLOCK = 1 << 20


def blocks(path: Path) -> Any:
    with open(path, "rb") as f:
        while block := f.read(BLOCK):
            yield block


def raw_transfer(schema: str, path: Path, target: Path) -> dict[str, float]:
    """Seconds for each raw psycopg way of moving the file's bytes in and out, on a connection of its own."""
    import psycopg

    out: dict[str, float] = {}
    table = f'"{schema}".raw_blobs'
    with psycopg.connect(DSN, autocommit=True) as conn:
        conn.execute(f"CREATE TABLE IF NOT EXISTS {table} (idx int PRIMARY KEY, data bytea NOT NULL)")
        conn.execute(f"ALTER TABLE {table} ALTER COLUMN data SET STORAGE EXTERNAL")  # as backup_chunks
        conn.execute(f"TRUNCATE {table}")
        t = time.perf_counter()
        with (
            conn.transaction(),
            conn.cursor() as cur,
            cur.copy(f"COPY {table} (idx, data) FROM STDIN (FORMAT BINARY)") as cp,
        ):
            cp.set_types(["int4", "bytea"])
            for i, block in enumerate(blocks(path)):
                cp.write_row((i, block))
        out["copy in"] = time.perf_counter() - t
        t = time.perf_counter()
        with open(target, "wb") as f, conn.cursor() as cur:
            with cur.copy(f"COPY (SELECT data FROM {table} ORDER BY idx) TO STDOUT (FORMAT BINARY)") as cp:
                cp.set_types(["bytea"])
                for (data,) in cp.rows():
                    f.write(data)
            f.flush()
            os.fsync(f.fileno())
        out["copy out"] = time.perf_counter() - t
        n = sum(1 for _ in blocks(path))
        conn.execute(f"TRUNCATE {table}")
        t = time.perf_counter()
        with conn.transaction():
            for i, block in enumerate(blocks(path)):
                conn.execute(f"INSERT INTO {table} (idx, data) VALUES (%s, %b)", (i, block))
        out["insert"] = time.perf_counter() - t
        t = time.perf_counter()
        with open(target, "wb") as f:
            for i in range(n):
                row = conn.execute(f"SELECT data FROM {table} WHERE idx = %s", (i,), binary=True).fetchone()
                assert row is not None
                f.write(row[0])
            f.flush()
            os.fsync(f.fileno())
        out["select"] = time.perf_counter() - t
        conn.execute(f"DROP TABLE {table}")
    assert target.stat().st_size == path.stat().st_size
    return out


def transfer(tmp: Path, schema: str, backup_path: Path, rounds: int) -> None:
    import hybridstore

    runs: dict[str, list[float]] = {
        k: [] for k in ("upload", "download", "download + verify", "copy in", "insert", "copy out", "select")
    }
    size = backup_path.stat().st_size
    with hybridstore.open(DSN, data_dir=tmp / "transfer", primary_schema=schema, background=False) as store:
        b = store.backups
        b.update_config(targets="local")
        info = b.import_backup(backup_path)
        files = b.locations.primary
        target = tmp / "fetched.hsb"
        for r in range(rounds):
            ours = r % 2 == 0
            for step in (0, 1) if ours else (1, 0):
                if step == 1:
                    for case, seconds in raw_transfer(schema, backup_path, target).items():
                        runs[case].append(seconds)
                    continue
                t = time.perf_counter()
                files.upload(Path(info.path), info)
                runs["upload"].append(time.perf_counter() - t)
                t = time.perf_counter()
                files.download(info.id, target)
                runs["download"].append(time.perf_counter() - t)
                b.check_file(target)
                runs["download + verify"].append(time.perf_counter() - t)
                files.delete([info.id])
    mb = size / 1e6
    med = {k: statistics.median(v) for k, v in runs.items()}
    best_in = min(med["copy in"], med["insert"])
    best_out = min(med["copy out"], med["select"])
    print_table(
        f"(d) a {mb:,.1f} MB backup file to and from the primary (1 MiB blocks, median of {rounds})",
        ["case", "MB/s", "x best raw"],
        [
            [
                "upload (hybridstore: COPY + row, one transaction, gateway)",
                f"{mb / med['upload']:,.0f}",
                f"{best_in / med['upload']:.2f}",
            ],
            [
                "raw COPY FROM STDIN (binary), one transaction",
                f"{mb / med['copy in']:,.0f}",
                f"{best_in / med['copy in']:.2f}",
            ],
            [
                "raw INSERT per block (binary), one transaction",
                f"{mb / med['insert']:,.0f}",
                f"{best_in / med['insert']:.2f}",
            ],
            [
                "download (hybridstore: SELECT per 4 blocks, fsync, SHA-256)",
                f"{mb / med['download']:,.0f}",
                f"{best_out / med['download']:.2f}",
            ],
            [
                "download + full verification (a fetch)",
                f"{mb / med['download + verify']:,.0f}",
                f"{best_out / med['download + verify']:.2f}",
            ],
            ["raw COPY TO STDOUT (binary), fsync", f"{mb / med['copy out']:,.0f}", f"{best_out / med['copy out']:.2f}"],
            ["raw SELECT per block (binary), fsync", f"{mb / med['select']:,.0f}", f"{best_out / med['select']:.2f}"],
        ],
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--records", type=int, default=500_000)
    parser.add_argument("--value-bytes", type=int, default=170, help="text per record (about 300 B of JSON)")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument(
        "--transfer-only", action="store_true", help="only (d): upload to and download from the primary"
    )
    args = parser.parse_args()
    header("bench_backup")
    import hybridstore

    with temp_dir() as tmp, pg_schema() as schema:
        data_dir = tmp / "node"
        t = time.perf_counter()
        with hybridstore.open(
            DSN, data_dir=data_dir, primary_schema=schema, background=False, write_mode="local_first"
        ) as store:
            rng = random.Random(20261125)
            vocabulary = [
                "".join(rng.choice("abcdefghijklmnopqrstuvwxyz") for _ in range(rng.randint(3, 9))) for _ in range(500)
            ]

            def value(i: int) -> dict[str, Any]:
                note = ""
                while len(note) < args.value_bytes:
                    note += rng.choice(vocabulary) + " "
                return {
                    "id": i,
                    "customer": f"c{rng.randrange(100_000)}",
                    "total": round(rng.uniform(1, 999), 2),
                    "items": rng.randrange(1, 9),
                    "status": rng.choice(["new", "paid", "shipped"]),
                    "note": note,
                }

            for start in range(0, args.records, 10_000):
                store.set_many(
                    "orders", ((f"order-{i:08d}", value(i)) for i in range(start, min(args.records, start + 10_000)))
                )
            report = store.sync_now()
            assert report.remaining == 0, report
        print(f"setup: {args.records:,} records written and pushed in {time.perf_counter() - t:.1f}s", flush=True)

        if args.transfer_only:
            res = child_backup(data_dir, DSN, schema, encrypt=False, source="local")
            transfer(tmp, schema, Path(res["path"]), args.rounds)
            return
        chunks, content = content_chunks(data_dir)
        runs: dict[str, list[float]] = {
            "raw zstd-3": [],
            "raw read": [],
            "backup zstd-3": [],
            "backup zstd-3 + AES-256-GCM": [],
        }
        growth: dict[str, int] = {}
        sizes: dict[str, int] = {}
        extra: dict[str, Any] = {}
        last: dict[str, Any] = {}
        first: dict[str, list[float]] = {}
        for r in range(args.rounds):
            order = list(runs) if r % 2 == 0 else list(reversed(runs))
            for case in order:
                if case == "raw zstd-3":
                    runs[case].append(raw_zstd(chunks))
                    continue
                if case == "raw read":
                    runs[case].append(raw_sqlite_read(data_dir / "local.db"))
                    continue
                res = child_backup(data_dir, DSN, schema, encrypt="AES" in case, source="local")
                assert res["content"] == content, (res["content"], content)
                runs[case].append(res["s"])
                first.setdefault(case, []).append(res["first_s"])
                growth[case] = max(growth.get(case, 0), res["rss_growth_kb"])
                sizes[case] = res["size"]
                extra[case] = res["extra"]
                last[case] = res
        del chunks
        mb = content / 1e6
        raw = statistics.median(runs["raw zstd-3"])
        read = statistics.median(runs["raw read"])
        rows = [
            ["raw zstd-3 (in memory, same bytes, 1 thread)", f"{mb / raw:,.0f}", "1.00", "", "", "", ""],
            [
                "(context) raw sqlite3 read of the same rows, no processing",
                f"{mb / read:,.0f}",
                f"{raw / read:.2f}",
                "",
                "",
                "",
                "",
            ],
            [
                "(context) raw read, then raw zstd-3 (one after the other)",
                f"{mb / (read + raw):,.0f}",
                f"{raw / (read + raw):.2f}",
                "",
                "",
                "",
                "",
            ],
        ]
        for case in ("backup zstd-3", "backup zstd-3 + AES-256-GCM"):
            s = statistics.median(runs[case])
            ratio = (mb / s) / (mb / raw)
            rows.append(
                [
                    case,
                    f"{mb / s:,.0f}",
                    f"{ratio:.2f} {verdict(ratio, 0.7)}",
                    f"{extra[case].get('write_s', 0):.2f} + {extra[case].get('verify_s', 0):.2f}",
                    f"{statistics.median(first[case]):.2f}",
                    f"{sizes[case] / 1e6:,.1f}",
                    f"{growth[case] / 1024:,.0f}",
                ]
            )
        print_table(
            f"(a) backup of {args.records:,} records, {mb:,.0f} MB of JSON lines (median of {args.rounds})",
            ["case", "MB/s", "x raw (0.7)", "write + check s", "first in process s", "file MB", "RSS growth MiB"],
            rows,
        )

        res = child_backup(data_dir, DSN, schema, encrypt=False, source="primary")
        dump_s, dump_size = pg_dump(schema, tmp / "records.dump")
        print_table(
            "(b) backup from the primary vs pg_dump -Fc of the same table",
            ["case", "seconds", "MB on disk", "records"],
            [
                [
                    "hybridstore backup, source=primary (zstd-3, verified)",
                    f"{res['s']:.2f}",
                    f"{res['size'] / 1e6:,.1f}",
                    f"{res['records']:,}",
                ],
                ["pg_dump -Fc -t records", f"{dump_s:.2f}", f"{dump_size / 1e6:,.1f}", f"{args.records:,}"],
                ["ratio (hybridstore / pg_dump)", f"{res['s'] / dump_s:.2f}", f"{res['size'] / dump_size:.2f}", ""],
            ],
        )

        backup_path = Path(last["backup zstd-3"]["path"])
        rows_raw: list[tuple[str, str, str]] = []
        restore_rates: list[float] = []
        raw_rates: list[float] = []
        for r in range(max(1, args.rounds - 1)):
            target = tmp / f"restore{r}"
            with hybridstore.open(data_dir=target, background=False) as fresh:
                b = fresh.backups
                b.import_backup(backup_path)
                t = time.perf_counter()
                rep = b.restore_backup(backup_path.stem)
                restore_rates.append(rep.written / (time.perf_counter() - t))
            shutil.rmtree(target)
            if not rows_raw:
                with hybridstore.open(data_dir=tmp / "reader", background=False) as reader:
                    reader.backups.import_backup(backup_path)
                    rows_raw = [
                        (name, line[0], json.dumps(line[1], separators=(",", ":")))
                        for kind, name, line in reader.backups.read_records(backup_path.stem)
                        if kind == "collection"
                    ]
            raw_path = tmp / f"raw{r}.db"
            raw_rates.append(len(rows_raw) / raw_sqlite_writes(raw_path, rows_raw))
            raw_path.unlink()
        rr, lim = statistics.median(restore_rates), statistics.median(raw_rates)
        print_table(
            "(c) restore into an empty store (validation pass + apply, pre-restore backup included)",
            ["case", "records/s", "x raw"],
            [
                ["restore_backup (queued writes, records + outbox)", f"{rr:,.0f}", f"{rr / lim:.2f}"],
                ["raw sqlite3: same rows, 1000 per transaction, records + outbox", f"{lim:,.0f}", "1.00"],
            ],
        )

        transfer(tmp, schema, backup_path, args.rounds)


if __name__ == "__main__":
    main()
