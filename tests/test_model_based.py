"""Model-based test: random sequences of writes, deletes, reads, lists, syncs and reopens behave like a dict."""

from __future__ import annotations

import shutil
import tempfile
import uuid
from pathlib import Path
from typing import Any

import psycopg
from hypothesis import HealthCheck, Phase, settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, invariant, rule

import hybridstore

from .fix_db import resolve_dsn

keys = st.sampled_from([f"k{i}" for i in range(8)] + ["é", "k1/x", "K"])
collections = st.sampled_from(["orders", "carts"])
# JSON text as PostgreSQL stores it: no NUL character (the store refuses those with a ValidationError)
texts = st.text(st.characters(blacklist_characters="\x00", blacklist_categories=("Cs",)), max_size=20)
values = st.recursive(
    st.none() | st.booleans() | st.integers(-(2**53), 2**53) | st.floats(allow_nan=False, allow_infinity=False) | texts,
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(texts, inner, max_size=3),
    max_leaves=8,
)


class StoreMachine(RuleBasedStateMachine):
    """Each example gets its own data dir and schema; the primary is the real server."""

    def __init__(self) -> None:
        super().__init__()
        self.dir = Path(tempfile.mkdtemp())
        self.schema = "m_" + uuid.uuid4().hex[:12]
        self.model: dict[tuple[str, str], Any] = {}
        self.mode = "write_through"
        self.store = self._open()

    def _open(self) -> hybridstore.HybridStore:
        return hybridstore.open(
            resolve_dsn(), data_dir=self.dir, primary_schema=self.schema, write_mode=self.mode, background=False
        )

    @rule(c=collections, k=keys, v=values)
    def set(self, c: str, k: str, v: Any) -> None:
        r = self.store.set(c, k, v)
        assert r.tier in ("primary", "local")
        self.model[(c, k)] = v

    @rule(c=collections, k=keys)
    def delete(self, c: str, k: str) -> None:
        self.store.delete(c, k)
        self.model.pop((c, k), None)

    @rule(c=collections, k=keys)
    def get(self, c: str, k: str) -> None:
        rec = self.store.get(c, k)
        if (c, k) in self.model:
            assert rec is not None and rec.value == self.model[(c, k)]
        else:
            assert rec is None

    @rule(c=collections, limit=st.integers(1, 4))
    def list_all(self, c: str, limit: int) -> None:
        seen: list[tuple[str, Any]] = []
        after = None
        while True:
            page = self.store.list(c, limit=limit, after=after)
            assert len(page) <= limit
            seen += [(r.key, r.value) for r in page]
            if page.next_after is None:
                break
            after = page.next_after
        assert seen == sorted((k, v) for (cc, k), v in self.model.items() if cc == c)

    @rule()
    def sync(self) -> None:
        report = self.store.sync_now()
        assert report.remaining == 0 and report.failed == 0

    @rule()
    def reopen_switching_mode(self) -> None:
        self.store.close()
        self.mode = "local_first" if self.mode == "write_through" else "write_through"
        self.store = self._open()

    @invariant()
    def nothing_in_journal(self) -> None:
        assert len(self.store.node.journal) == 0

    def teardown(self) -> None:
        try:
            assert self.store.sync_now().remaining == 0
            assert self.store.node.gateway.configured
            self.store.node.gateway.tier.migrate()  # the schema exists even if nothing was ever written
            with psycopg.connect(resolve_dsn(), autocommit=True) as conn:
                rows = {
                    (c, k): v
                    for c, k, v in conn.execute(
                        f'SELECT collection, key, value FROM "{self.schema}".records WHERE value IS NOT NULL'
                    )
                }
            assert rows == self.model, "the primary converged to the model"
        finally:
            self.store.close()
            with psycopg.connect(resolve_dsn(), autocommit=True) as conn:
                conn.execute(f'DROP SCHEMA IF EXISTS "{self.schema}" CASCADE')
            shutil.rmtree(self.dir, ignore_errors=True)


StoreMachine.TestCase.settings = settings(
    max_examples=40,
    stateful_step_count=25,
    deadline=None,
    phases=[Phase.explicit, Phase.reuse, Phase.generate, Phase.shrink],  # 'explain' traces every line: far too slow
    suppress_health_check=[HealthCheck.too_slow],
)
TestStore = StoreMachine.TestCase
