"""The commands users asked for: collections, pending, export / import, list --all, repair; and delete of a
record that does not exist."""

from __future__ import annotations

import json
import random
from pathlib import Path
from typing import Any

import psycopg
from typer.testing import CliRunner

import hybridstore
from hybridstore.cli import app
from hybridstore.validation import encode_value

from .faults import garble_pages, refuse_poison, table_pages

runner = CliRunner()


def cli(*args: str, input: str | None = None) -> tuple[int, str]:
    result = runner.invoke(app, list(args), input=input)
    assert result.exception is None or isinstance(result.exception, SystemExit), repr(result.exception)
    return result.exit_code, result.stdout if "--json" in args else result.output


def fill(d: Path, records: dict[str, dict[str, Any]]) -> None:
    with hybridstore.open(data_dir=d, background=False) as store:
        for collection, items in records.items():
            store.set_many(collection, items.items())


def test_collections(tmp_path: Path) -> None:
    d = tmp_path / "d"
    products = {f"p{i}": {"name": f"shoe {i}", "price": i} for i in range(30)}
    fill(d, {"products": products, "orders": {"o1": [1, 2, 3]}})
    assert cli("-d", str(d), "delete", "orders", "o1")[0] == 0
    code, out = cli("-d", str(d), "collections", "--json")
    figures = {f["collection"]: f for f in json.loads(out)}
    assert code == 0 and set(figures) == {"orders", "products"}
    assert figures["products"] == {
        "collection": "products",
        "records": 30,
        "bytes": sum(len(encode_value(v).encode()) for v in products.values()),
        "pending": 30,
    }
    # Embedded: the delete replaced the write's queued op (one per key).
    assert figures["orders"]["records"] == 0 and figures["orders"]["pending"] == 1, "a write, then its delete"
    code, out = cli("-d", str(d), "collections")
    assert code == 0 and "products" in out and "2 collections" in out and "total" in out


def test_list_all_and_delete_of_a_missing_record(tmp_path: Path) -> None:
    d = tmp_path / "d"
    fill(d, {"c": {f"k{i:03d}": i for i in range(250)}})
    code, out = cli("-d", str(d), "list", "c", "--all", "--limit", "100", "--json")
    page = json.loads(out)
    assert code == 0 and [r["key"] for r in page["records"]] == [f"k{i:03d}" for i in range(250)]
    assert page["next_after"] is None
    code, out = cli("-d", str(d), "list", "c", "--limit", "1")
    assert "c (1 record)" in out and "more: --after 'k000'" in out
    code, out = cli("-d", str(d), "delete", "c", "nope")
    assert code == 0 and "does not exist: nothing to delete" in out and "deleted" not in out
    code, out = cli("-d", str(d), "delete", "c", "nope", "--json")
    assert json.loads(out) == {"collection": "c", "key": "nope", "deleted": False, "absent": True}
    code, out = cli("-d", str(d), "delete", "c", "k000", "--json")
    assert code == 0 and json.loads(out)["deleted"] is True
    code, out = cli("-d", str(d), "pending", "--json")
    # Embedded: one queued op per key (k000's delete replaced its set); the absent key got no tombstone.
    assert json.loads(out)["depth"] == 250, "the absent key got no tombstone"


def test_export_and_import_round_trip(tmp_path: Path) -> None:
    d, e = tmp_path / "d", tmp_path / "e"
    data = {"products": {f"p{i}": {"price": i, "tags": ["a", "ü"]} for i in range(1200)}, "notes": {"n1": "text"}}
    fill(d, data)
    target = tmp_path / "out" / "all.jsonl"
    target.parent.mkdir()
    code, out = cli("-d", str(d), "export", "-o", str(target), "--json")
    assert code == 0 and json.loads(out) == {
        "path": str(target),
        "records": 1201,
        "collections": {"notes": 1, "products": 1200},
    }
    lines = [json.loads(line) for line in target.read_text(encoding="utf-8").splitlines()]
    assert lines[0] == {"collection": "notes", "key": "n1", "value": "text"} and len(lines) == 1201
    assert [p.name for p in target.parent.iterdir()] == ["all.jsonl"], "no temporary file left"
    code, out = cli("-d", str(e), "import", str(target))
    assert code == 0 and "imported 1,201 records into 2 collections" in out
    code, out = cli("-d", str(e), "list", "products", "--all", "--limit", "500", "--json")
    assert {r["key"]: r["value"] for r in json.loads(out)["records"]} == data["products"]
    # standard output and standard input, one collection named on the command line
    result = runner.invoke(app, ["-d", str(d), "export", "notes"])
    assert result.exit_code == 0 and result.stdout == '{"collection": "notes", "key": "n1", "value": "text"}\n'
    code, out = cli("-d", str(e), "import", "-", "--collection", "memo", "--json", input='{"key": "m1", "value": 1}\n')
    assert code == 0 and json.loads(out) == {"records": 1, "collections": {"memo": 1}, "still_queued": 1}
    code, out = cli("-d", str(d), "export", "--json")
    assert code == 2 and "--output" in json.loads(out)["error"]["message"]


def test_import_checks_every_line_first(tmp_path: Path) -> None:
    d = tmp_path / "d"
    for text, message in (
        ('{"collection": "c", "key": "a", "value": 1}\n\n{"collection": "c", "key": "b", "value": }\n', "line 3"),
        ('{"collection": "c", "key": "a"}\n', 'line 1 is not a record: {"collection"'),
        ('{"key": "a", "value": 1}\n', "line 1 names no collection"),
        ('{"collection": "bad name", "key": "a", "value": 1}\n', "line 1: invalid collection"),
        (b"\xff\xfe".decode("latin-1"), "not UTF-8"),
    ):
        source = tmp_path / "in.jsonl"
        source.write_bytes(text.encode("latin-1") if "not UTF-8" in message else text.encode())
        code, out = cli("-d", str(d), "import", str(source))
        assert code == 2 and "nothing was imported" in out and message in out, out
        assert not d.exists(), "a file that cannot be imported creates nothing"
    code, out = cli("-d", str(d), "import", str(tmp_path / "missing.jsonl"))
    assert code == 2 and "no such file" in out


def test_pending_says_what_waits_and_why(
    tmp_path: Path, pg_dsn: str, pg_schema: str, pg: psycopg.Connection[Any]
) -> None:
    d = tmp_path / "d"
    fill(d, {"c": {"a": 1}})
    code, out = cli("-d", str(d), "pending", "--json")
    report = json.loads(out)
    assert code == 0 and report["depth"] == 1 and "no primary is configured" in report["reason"]
    assert report["entries"][0]["attempts"] == 0 and report["entries"][0]["key"] == "a"
    code, out = cli("-d", str(d), "pending")
    assert "1 write waiting" in out and "not tried yet" in out
    # a write the primary refuses: its attempts and the primary's error
    opts: dict[str, Any] = {"primary_schema": pg_schema, "background": False, "write_mode": "local_first"}
    with hybridstore.open(pg_dsn, data_dir=d, **opts) as store:
        store.sync_now()
        refuse_poison(pg, pg_schema)
        store.set("c", "bad", {"poison": True})  # queued, then refused once (a dead letter after three)
        store.sync_now()
    base = ["-d", str(d), "--primary-url", pg_dsn, "--schema", pg_schema]
    code, out = cli(*base, "pending", "--json")
    report = json.loads(out)
    entry = report["entries"][0]
    assert report["depth"] == 1 and entry["key"] == "bad" and entry["attempts"] >= 1
    assert "poison value refused" in entry["last_error"] and "the primary answers" in report["reason"]
    code, out = cli(*base, "pending")
    assert "c/bad" in out and "poison value refused" in out
    code, out = cli("-d", str(d), "--primary-url", "postgresql://u@127.0.0.1:1/x", "pending", "--json")
    assert "unreachable" in json.loads(out)["reason"]


def test_repair(tmp_path: Path) -> None:
    d = tmp_path / "d"
    fill(d, {"c": {f"k{i:04d}": {"i": i} for i in range(500)}})
    code, out = cli("-d", str(d), "repair")
    assert code == 0 and "intact" in out
    db = d / "local.db"
    pages = table_pages(db, "records")
    garble_pages(db, random.Random(1).sample(pages, len(pages) // 3), seed=4)
    code, out = cli("-d", str(d), "repair", "--json")
    result = json.loads(out)
    assert code == 0 and result["rebuilt"] is True and result["report"]["source"] == "salvage only"
    assert result["report"]["requeued"] == 500 and result["report"]["unrecovered"] == []
    assert result["report"]["moved_aside"] and str(d / "broken") in result["report"]["moved_aside"][0]
    code, out = cli("-d", str(d), "get", "c", "k0123", "--json")
    assert code == 0 and json.loads(out)["value"] == {"i": 123}
    code, out = cli("-d", str(d), "repair")
    assert code == 0 and "intact" in out
    code, out = cli("-d", str(tmp_path / "none"), "repair")
    assert code == 2 and "does not exist" in out
