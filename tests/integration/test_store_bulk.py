"""PostgreSQL's bulk path: large batches load with the HNSW index dropped and built once after them."""

from __future__ import annotations

from collections.abc import Iterator

import numpy as np
import psycopg
import pytest

from client.store import open_store
from client.store import postgres as pg_store
from tests.support.databases import fresh_database
from tests.support.store_rows import DIM, RESNET, images, sha

N = 600  # rows per test: enough for a walk to matter, quick to index


@pytest.fixture
def database(pg_url: str) -> Iterator[str]:
    """A URL of a fresh, empty database on the test server."""
    with fresh_database(pg_url, "bulk") as url:
        yield url


@pytest.fixture
def small_bulk(monkeypatch: pytest.MonkeyPatch) -> None:
    """The bulk path for batches of 100 rows or more, so the tests stay small."""
    monkeypatch.setattr(pg_store, "_BULK_ROWS", 100)


def _rows(location: str) -> list[tuple]:
    with psycopg.connect(location) as conn:
        return conn.execute(
            "SELECT sha256, embedding::text, predictions::text FROM imgsim.images_1 ORDER BY sha256"
        ).fetchall()


def _hnsw_indexes(location: str) -> list[str]:
    with psycopg.connect(location) as conn:
        return [r[0] for r in conn.execute(
            "SELECT indexdef FROM pg_indexes WHERE schemaname = 'imgsim' AND indexdef LIKE '%USING hnsw%'"
        )]  # fmt: skip


def _vectors(n: int, seed: int = 3) -> np.ndarray:
    return np.random.default_rng(seed).standard_normal((n, DIM)).astype(np.float32)


def test_a_large_batch_gives_the_same_rows_index_and_search_as_the_row_path(
    pg_url: str, database: str, small_bulk: None, monkeypatch: pytest.MonkeyPatch
) -> None:
    vectors = _vectors(N)
    queries = _vectors(20, seed=4)
    deferred = []
    real = pg_store.PostgresStore._index_deferred
    monkeypatch.setattr(
        pg_store.PostgresStore, "_index_deferred", lambda self, model: deferred.append(model) or real(self, model)
    )
    with open_store(database) as bulk:
        bulk.put_many(RESNET, images(vectors))
    assert len(deferred) == 1  # the bulk path was taken
    with open_store(database) as bulk:
        bulk_hits = [bulk.search(RESNET, q, 10) for q in queries]
    monkeypatch.setattr(pg_store, "_BULK_ROWS", 10**9)  # the row path: index kept current per row
    with fresh_database(pg_url, "rows") as by_rows:
        with open_store(by_rows) as rows:
            items = images(vectors)
            for i in range(0, N, 50):
                rows.put_many(RESNET, items[i : i + 50])
            row_hits = [rows.search(RESNET, q, 10) for q in queries]
        assert _rows(database) == _rows(by_rows)
        assert _hnsw_indexes(database) == _hnsw_indexes(by_rows) and len(_hnsw_indexes(database)) == 1
    assert bulk_hits == row_hits
    unit = vectors / np.linalg.norm(vectors, axis=1, keepdims=True)
    exact = [[sha(int(i)) for i in np.argsort(-(unit @ q))[:10]] for q in queries]
    assert [[s for s, _ in hits] for hits in bulk_hits] == exact


def test_bulk_load_streams_chunks_into_one_index_and_replaces_rows(database: str) -> None:
    vectors = _vectors(N)
    with open_store(database) as store:
        store.put_many(RESNET, images(vectors[:10]))  # a store that already holds a few
        chunks = (images(vectors[i : i + 100] * 2, start=i) for i in range(0, N, 100))
        assert store.bulk_load(RESNET, chunks, paths={sha(0): "a/0.jpg"}) == N
        assert store.count(RESNET) == N
        assert np.array_equal(store.get_many(RESNET, [sha(5)])[sha(5)]["embedding"], vectors[5] * 2)
        assert store.paths(RESNET, [sha(0)]) == {sha(0): ["a/0.jpg"]}
        assert [s for s, _ in store.search(RESNET, vectors[123], 1)] == [sha(123)]
    assert len(_hnsw_indexes(database)) == 1


def test_a_bad_vector_in_a_later_chunk_leaves_the_store_as_before(database: str, small_bulk: None) -> None:
    vectors = _vectors(N)
    with open_store(database) as store:
        store.put_many(RESNET, images(vectors[:50]))
    before, indexes = _rows(database), _hnsw_indexes(database)
    bad = vectors[300:400].copy()
    bad[7, 0] = np.nan

    def chunks() -> Iterator[list]:
        yield images(vectors[50:300] * 3, start=50)  # new rows, and replaced ones in the next
        yield images(vectors[:50] * 5)
        yield images(bad, start=300)

    with open_store(database) as store:
        with pytest.raises(ValueError, match="NaN"):
            store.bulk_load(RESNET, chunks())
        with pytest.raises(ValueError, match="NaN"):
            store.put_many(RESNET, images(np.concatenate([vectors[:50] * 5, bad]), start=0))
        assert [s for s, _ in store.search(RESNET, vectors[20], 1)] == [sha(20)]
        assert _rows(database) == before
        assert _hnsw_indexes(database) == indexes and len(indexes) == 1
        store.put_many(RESNET, images(vectors[50:60], start=50))  # still writable afterwards
        assert store.count(RESNET) == 60


def test_put_many_rebuilds_the_index_only_for_a_batch_large_against_the_table(
    database: str, small_bulk: None, monkeypatch: pytest.MonkeyPatch
) -> None:
    deferred = []
    real = pg_store.PostgresStore._index_deferred
    monkeypatch.setattr(
        pg_store.PostgresStore, "_index_deferred", lambda self, model: deferred.append(model) or real(self, model)
    )
    vectors = _vectors(N)
    with open_store(database) as store:
        store.put_many(RESNET, images(vectors[:99]))  # under _BULK_ROWS: the row path
        assert deferred == []
        store.put_many(RESNET, images(vectors[99:250], start=99))  # 151 rows, 1.5x the 99 stored: row path
        assert deferred == []
        store.put_many(RESNET, images(vectors[250:], start=250))  # 350 rows, 1.4x the 250 stored: row path
        assert deferred == []
        more = _vectors(2 * N, seed=8)
        store.put_many(RESNET, images(more, start=N))  # 1,200 rows, 2x the 600 stored: the bulk path
        assert len(deferred) == 1
        assert store.count(RESNET) == 3 * N
        assert [s for s, _ in store.search(RESNET, vectors[7], 1)] == [sha(7)]
        assert [s for s, _ in store.search(RESNET, more[7], 1)] == [sha(N + 7)]
    assert len(_hnsw_indexes(database)) == 1


def test_the_bulk_index_build_gets_parallel_workers_and_leaves_no_setting_behind(
    database: str, small_bulk: None
) -> None:
    """Vectors in TOAST make the heap look tiny to the planner, which then plans no parallel build."""
    notices: list[str] = []
    with open_store(database) as bulk:
        bulk._conn.execute("SET client_min_messages = debug1")
        bulk._conn.add_notice_handler(lambda d: notices.append(d.message_primary or ""))
        bulk.put_many(RESNET, images(_vectors(N)))
    asked = [m for m in notices if "parallel workers" in m]
    assert any("request for 2 parallel workers" in m for m in asked), asked
    with psycopg.connect(database) as conn:
        assert conn.execute("SELECT reloptions FROM pg_class WHERE relname = 'images_1'").fetchone() == (None,)
    assert len(_hnsw_indexes(database)) == 1
