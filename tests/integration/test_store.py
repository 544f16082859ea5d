"""The store of seen images, on SQLite and on a real PostgreSQL + pgvector server.

Tests that need no database server are in tests/unit/test_store_sqlite.py.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import psycopg
import pytest
from scipy.spatial.distance import cdist

from client.store import SCHEMA_VERSION, StoreError, model_key, open_store, sqlite
from client.torchserve_client import DEFAULT_URL
from tests.support.databases import create_database, fresh_database
from tests.support.store_rows import DIM, LITE, NEVER_STORED, RESNET, images, sha


@pytest.fixture(params=["sqlite", "sqlite-snapshot", "postgres"])
def location(request: pytest.FixtureRequest, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[str]:
    """An empty store location: a SQLite file path, or a fresh database on the test server.

    sqlite-snapshot: SQLite searching every model through its memory-mapped int8 snapshot,
    which a real store does from sqlite.SNAPSHOT_FROM vectors on.
    """
    if request.param.startswith("sqlite"):
        if request.param == "sqlite-snapshot":
            monkeypatch.setattr(sqlite, "SNAPSHOT_FROM", 1)
        yield str(tmp_path / "store" / "embeddings.sqlite")
        return
    with fresh_database(request.getfixturevalue("pg_url"), "store") as url:
        yield url


def test_put_then_get_returns_exact_floats_and_predictions(location: str) -> None:
    rng = np.random.default_rng(1)
    vectors = rng.standard_normal((5, DIM)).astype(np.float32) * np.float32(1e-3)
    vectors[0, 0] = np.float32(np.pi)  # a value with every mantissa bit in use
    stored = images(vectors)
    with open_store(location) as store:
        store.put_many(RESNET, stored)
        got = store.get_many(RESNET, [item["sha256"] for item in stored])
    assert set(got) == {item["sha256"] for item in stored}
    for item in stored:
        back = got[item["sha256"]]
        assert back["embedding"].dtype == np.float32
        assert back["embedding"].tobytes() == item["embedding"].tobytes()
        assert back["predictions"] == item["predictions"]


def test_missing_shas_are_absent_from_get_many(location: str) -> None:
    with open_store(location) as store:
        store.put_many(RESNET, images(np.ones((2, DIM))))
        got = store.get_many(RESNET, [sha(0), sha("never stored"), sha(1)])
        assert set(got) == {sha(0), sha(1)}
        assert store.get_many(NEVER_STORED, [sha(0)]) == {}


def test_putting_the_same_images_again_keeps_one_row_each(location: str) -> None:
    first = images(np.ones((3, DIM)))
    again = images(np.full((3, DIM), 2.0))
    with open_store(location) as store:
        store.put_many(RESNET, first)
        store.put_many(RESNET, first)
        store.put_many(RESNET, again + again[:1])  # a sha twice in one batch: last one wins
        assert store.count(RESNET) == 3
        assert np.all(store.get_many(RESNET, [sha(0)])[sha(0)]["embedding"] == 2.0)


def test_same_bytes_under_two_paths_are_stored_once_with_both_paths(location: str) -> None:
    (item,) = images(np.ones((1, DIM)))
    with open_store(location) as store:
        store.put_many(RESNET, [item], paths={item["sha256"]: "holiday/cat.jpg"})
        store.remember_paths({item["sha256"]: ["backup/cat.jpg", "holiday/cat.jpg"]})
        assert store.count(RESNET) == 1
        assert sorted(store.paths(RESNET)[item["sha256"]]) == ["backup/cat.jpg", "holiday/cat.jpg"]
        assert store.paths(RESNET, [item["sha256"], sha("unknown")]) == store.paths(RESNET)


def test_known_paths_are_those_inside_the_folder_and_never_a_sibling_with_the_same_prefix(location: str) -> None:
    items = images(np.ones((4, DIM)))
    where = ["/photos/a.jpg", "/photos/trip/b.jpg", "/photos2/c.jpg", "/photos-old/d.jpg"]
    with open_store(location) as store:
        store.put_many(RESNET, items, paths={item["sha256"]: path for item, path in zip(items, where)})
        assert store.known_paths("/photos") == {"/photos/a.jpg": sha(0), "/photos/trip/b.jpg": sha(1)}
        assert store.known_paths("/photos/") == store.known_paths("/photos")
        assert store.known_paths("/elsewhere") == {}


def test_forgetting_paths_drops_contents_seen_nowhere_else_and_keeps_the_rest(location: str) -> None:
    items = images(np.ones((3, DIM)))
    with open_store(location) as store:
        store.put_many(RESNET, items[:2], paths={sha(0): ["/p/a.jpg", "/backup/a.jpg"], sha(1): "/p/b.jpg"})
        store.put_many(LITE, items[1:], paths={sha(1): "/p/b.jpg", sha(2): "/p/c.jpg"})
        forgotten = store.forget_paths(["/p/a.jpg", "/p/b.jpg", "/p/never-seen.jpg"])
        assert forgotten == 1  # b: a is still in /backup
        assert set(store.get_many(RESNET, [sha(0), sha(1)])) == {sha(0)}
        assert set(store.get_many(LITE, [sha(1), sha(2)])) == {sha(2)}  # every model forgets b
        assert store.known_paths("/p") == {"/p/c.jpg": sha(2)}
        assert [s for s, _ in store.search(RESNET, np.ones(DIM, np.float32), k=5)] == [sha(0)]
        assert store.forget_paths([]) == 0


def file_state(path: str, n: int, **changes: int) -> dict:
    return {"path": path, "device": 2049, "inode": 1000 + n, "size": 100 * n, "mtime_ns": 1_700_000_000_000_000_000 + n,
            "sha256": sha(n), **changes}  # fmt: skip


def test_file_states_are_remembered_per_path_and_the_latest_wins(location: str) -> None:
    big = file_state("/p/big.jpg", 3, device=2**64 - 2, inode=2**63 + 5)  # stat's numbers are unsigned 64-bit
    with open_store(location) as store:
        assert store.file_states(["/p/a.jpg"]) == {}
        store.remember_file_states([file_state("/p/a.jpg", 1), file_state("/p/b.jpg", 2), big])
        store.remember_file_states([file_state("/p/a.jpg", 1, size=7, mtime_ns=9), file_state("/p/a.jpg", 4)])
        store.remember_file_states([])
    with open_store(location) as store:  # they outlive the process that remembered them
        got = store.file_states(["/p/a.jpg", "/p/big.jpg", "/p/never.jpg", "/p/a.jpg"])
        assert got == {"/p/a.jpg": file_state("/p/a.jpg", 4), "/p/big.jpg": big}
        assert len(store.file_states(f"/p/{name}.jpg" for name in ["a", "b"] * 6000)) == 2  # chunked lookups
        with pytest.raises(ValueError, match="sha256"):
            store.remember_file_states([file_state("/p/c.jpg", 5, sha256="not a sha")])  # type: ignore[arg-type]


def test_forgetting_paths_forgets_their_file_states(location: str) -> None:
    (item,) = images(np.ones((1, DIM)))
    with open_store(location) as store:
        store.put_many(RESNET, [item], paths={item["sha256"]: ["/p/a.jpg", "/p/b.jpg"]})
        store.remember_file_states([file_state("/p/a.jpg", 0), file_state("/p/b.jpg", 0), file_state("/q/c.jpg", 1)])
        store.forget_paths(["/p/a.jpg", "/q/c.jpg"])  # c: a state with no recorded path
        assert set(store.file_states(["/p/a.jpg", "/p/b.jpg", "/q/c.jpg"])) == {"/p/b.jpg"}


def as_schema_left_it(location: str, version: int, *later_tables: str) -> None:
    """Makes the store at ``location`` what the client of schema ``version`` left: without the tables of later steps."""
    if location.startswith("postgresql://"):
        with psycopg.connect(location, autocommit=True) as conn:
            for table in later_tables:
                conn.execute(f"DROP TABLE imgsim.{table}")
            conn.execute("UPDATE imgsim.meta SET value = %s WHERE key = 'schema_version'", (str(version),))
    else:
        with sqlite3.connect(location) as conn:
            for table in later_tables:
                conn.execute(f"DROP TABLE {table}")
            conn.execute("UPDATE meta SET value = ? WHERE key = 'schema_version'", (str(version),))
        conn.close()


def test_a_schema_3_store_is_upgraded_to_remember_file_states(location: str) -> None:
    with open_store(location) as store:
        store.put_many(RESNET, images(np.ones((1, DIM))), paths={sha(0): "/p/a.jpg"})
    as_schema_left_it(location, 3, "file_state", "failures")
    with open_store(location) as store:
        assert store.known_paths("/p") == {"/p/a.jpg": sha(0)} and store.count(RESNET) == 1
        store.remember_file_states([file_state("/p/a.jpg", 0)])
        assert store.file_states(["/p/a.jpg"]) == {"/p/a.jpg": file_state("/p/a.jpg", 0)}


def test_refusals_are_remembered_per_model_and_the_latest_wins(location: str) -> None:
    damaged = {"code": "corrupt_image", "message": "the JPEG data is damaged or truncated"}
    with open_store(location) as store:
        assert store.failures(RESNET, [sha(1)]) == {}
        store.remember_failures(RESNET, {sha(1): damaged, sha(2): {"code": "empty", "message": "0 bytes"}})
        store.remember_failures(RESNET, {sha(2): {"code": "unsupported_format", "message": "not an image"}})
        with pytest.raises(ValueError):
            store.remember_failures(RESNET, {"not a sha": damaged})
    with open_store(location) as store:  # it outlives the process that was refused
        assert store.failures(RESNET, [sha(1), sha(2), sha(3)]) == {
            sha(1): damaged, sha(2): {"code": "unsupported_format", "message": "not an image"}}  # fmt: skip
        assert store.failures(LITE, [sha(1), sha(2)]) == {}  # another model may read it


def test_a_schema_5_store_is_upgraded_to_remember_refusals(location: str) -> None:
    with open_store(location) as store:
        store.put_many(RESNET, images(np.ones((1, DIM))), paths={sha(0): "/p/a.jpg"})
    as_schema_left_it(location, 5, "failures")
    with open_store(location) as store:
        assert store.known_paths("/p") == {"/p/a.jpg": sha(0)} and store.failures(RESNET, [sha(1)]) == {}
        store.remember_failures(RESNET, {sha(1): {"code": "empty", "message": "0 bytes"}})
        assert store.failures(RESNET, [sha(1)]) == {sha(1): {"code": "empty", "message": "0 bytes"}}


def test_pairs_marked_not_duplicates_are_remembered_once_whichever_way_round(location: str) -> None:
    with open_store(location) as store:
        assert store.not_duplicates() == set()
        store.mark_not_duplicates([(sha(2), sha(1))])
        store.mark_not_duplicates([(sha(1), sha(2)), (sha(3), sha(1))])
        assert store.not_duplicates() == {tuple(sorted((sha(1), sha(2)))), tuple(sorted((sha(1), sha(3))))}
        with pytest.raises(ValueError, match="one content"):
            store.mark_not_duplicates([(sha(1), sha(1))])
    with open_store(location) as store:  # it outlives the process that marked it
        assert len(store.not_duplicates()) == 2


def test_second_model_never_reuses_first_models_vectors(location: str) -> None:
    resnet, lite = model_key(RESNET), model_key(LITE)
    with open_store(location) as store:
        store.put_many(RESNET, images(np.ones((4, DIM))))
        assert store.get_many(LITE, [sha(0)]) == {}
        assert store.search(LITE, np.ones(DIM, np.float32), k=3) == []
        store.put_many(LITE, images(np.full((1, DIM), 7.0)))
        assert np.all(store.get_many(RESNET, [sha(0)])[sha(0)]["embedding"] == 1.0)
        assert np.all(store.get_many(LITE, [sha(0)])[sha(0)]["embedding"] == 7.0)
        assert [(m["model"], m["count"]) for m in store.models()] == sorted([(resnet, 4), (lite, 1)])
        assert {m["weights_sha256"] for m in store.models()} == {RESNET["weights_sha256"], LITE["weights_sha256"]}


def test_endpoint_remembers_the_model_it_served_so_a_rerun_need_not_ask(location: str) -> None:
    url = DEFAULT_URL
    with open_store(location) as store:
        assert store.endpoint(url, "embed") is None
        store.remember_endpoint(url, "embed", RESNET)
    with open_store(location) as store:
        assert store.endpoint(url, "embed") == RESNET
        assert store.endpoint(url, "other") is None
        store.remember_endpoint(url, "embed", LITE)  # the server was redeployed with another model
        assert store.endpoint(url, "embed") == LITE
        assert store.count(RESNET) == 0


def test_identity_that_contradicts_the_stored_one_is_refused(location: str) -> None:
    wider = {**RESNET, "embedding_dim": DIM * 2}  # same key, different vectors: must not mix
    with open_store(location) as store:
        store.put_many(RESNET, images(np.ones((1, DIM))))
        with pytest.raises(StoreError, match="embedding_dim"):
            store.put_many(wider, images(np.ones((1, DIM * 2)), start=10))
        assert store.count(RESNET) == 1


def test_embedding_of_the_wrong_width_or_with_nan_is_rejected(location: str) -> None:
    bad = np.ones((1, DIM), np.float32)
    bad[0, 3] = np.nan
    with open_store(location) as store:
        with pytest.raises(ValueError, match=r"shape \(8,\)"):
            store.put_many(RESNET, images(np.ones((1, 8))))
        with pytest.raises(ValueError, match="NaN"):
            store.put_many(RESNET, images(bad))
        with pytest.raises(ValueError, match="model_key"):
            store.put_many(model_key(LITE), images(np.ones((1, DIM))))  # a key string where the identity goes
        assert store.count(RESNET) == 0


@pytest.mark.parametrize(("version", "says"), [(SCHEMA_VERSION + 98, "newer"), (0, "older")])
def test_store_of_another_schema_version_is_refused_with_what_to_do(location: str, version: int, says: str) -> None:
    with open_store(location) as store:
        store.put_many(RESNET, images(np.ones((1, DIM))))
    if location.startswith("postgresql://"):
        with psycopg.connect(location, autocommit=True) as conn:
            conn.execute("UPDATE imgsim.meta SET value = %s WHERE key = 'schema_version'", (str(version),))
    else:
        with sqlite3.connect(location) as conn:
            conn.execute("UPDATE meta SET value = ? WHERE key = 'schema_version'", (str(version),))
        conn.close()
    with pytest.raises(StoreError, match=rf"schema {version}, {says} than this client's {SCHEMA_VERSION}"):
        open_store(location)


@pytest.mark.parametrize("metric", ["cosine", "dot", "euclidean", "manhattan", "angular"])
def test_search_order_and_scores_match_scipy(location: str, metric: str) -> None:
    rng = np.random.default_rng(7)
    vectors = rng.standard_normal((200, DIM)).astype(np.float32)
    query = rng.standard_normal(DIM).astype(np.float32)
    reference = {
        "cosine": 1 - cdist([query], vectors, "cosine")[0],
        "dot": vectors.astype(np.float64) @ query.astype(np.float64),
        "euclidean": cdist([query], vectors, "euclidean")[0],
        "manhattan": cdist([query], vectors, "cityblock")[0],
        "angular": np.arccos(np.clip(1 - cdist([query], vectors, "cosine")[0], -1, 1)) / np.pi,
    }[metric]
    order = np.argsort(-reference if metric in ("cosine", "dot") else reference, kind="stable")[:10]
    with open_store(location) as store:
        store.put_many(RESNET, images(vectors))
        found = store.search(RESNET, query, k=10, metric=metric)
    assert [s for s, _ in found] == [sha(i) for i in order]
    np.testing.assert_allclose([score for _, score in found], reference[order], rtol=1e-6, atol=1e-9)


def test_search_never_returns_excluded_images(location: str) -> None:
    rng = np.random.default_rng(3)
    vectors = rng.standard_normal((50, DIM)).astype(np.float32)
    with open_store(location) as store:
        store.put_many(RESNET, images(vectors))
        unfiltered = [s for s, _ in store.search(RESNET, vectors[0], k=5)]
        assert unfiltered[0] == sha(0)
        found = [s for s, _ in store.search(RESNET, vectors[0], k=5, exclude=unfiltered[:3])]
        assert found[:2] == unfiltered[3:]
        assert not set(found) & set(unfiltered[:3])
        everything = [sha(i) for i in range(50)]
        assert store.search(RESNET, vectors[0], k=5, exclude=everything) == []
        assert len(store.search(RESNET, vectors[0], k=500, exclude=everything[:45])) == 5


def test_search_sees_images_added_after_the_first_search(location: str) -> None:
    target = np.arange(DIM, dtype=np.float32)
    with open_store(location) as store:
        store.put_many(RESNET, images(np.ones((3, DIM))))
        assert store.search(RESNET, target, k=1)[0][0] != sha(99)
        store.put_many(RESNET, images(target[None, :], start=99))
        assert store.search(RESNET, target, k=1) == [(sha(99), pytest.approx(1.0))]
        store.put_many(RESNET, images(-target[None, :], start=99))  # replaced in place
        assert store.search(RESNET, target, k=1)[0][0] != sha(99)


def test_postgres_top1_equals_exact_top1_on_random_data(pg_url: str) -> None:
    rng = np.random.default_rng(11)
    identity = {**RESNET, "embedding_dim": 64}
    vectors = rng.standard_normal((3000, 64)).astype(np.float32)
    queries = rng.standard_normal((30, 64)).astype(np.float32)
    unit = vectors / np.linalg.norm(vectors, axis=1, keepdims=True)
    with fresh_database(pg_url, "store") as url, open_store(url) as store:
        store.put_many(identity, images(vectors))
        for query in queries:
            exact = int(np.argmax(unit @ query))
            assert store.search(identity, query, k=10)[0][0] == sha(exact)


def hnsw_indexes(url: str) -> list[str]:
    with psycopg.connect(url) as conn:
        return [r[0] for r in conn.execute("SELECT indexdef FROM pg_indexes WHERE indexdef LIKE '%USING hnsw%'")]


def index_scans(url: str) -> int:
    with psycopg.connect(url) as conn:
        return conn.execute("SELECT coalesce(sum(idx_scan), 0) FROM pg_stat_user_indexes WHERE indexrelname LIKE '%embedding%'").fetchone()[0]


def test_a_store_with_the_old_float32_index_gets_the_halfvec_one_on_open(pg_url: str) -> None:
    url = create_database(pg_url, "store")
    vectors = np.random.default_rng(5).standard_normal((500, DIM)).astype(np.float32)
    with open_store(url) as store:
        store.put_many(RESNET, images(vectors))
    with psycopg.connect(url, autocommit=True) as conn:  # as stores made before the halfvec index were
        (index,) = conn.execute("SELECT indexname FROM pg_indexes WHERE indexdef LIKE '%halfvec%'").fetchone()
        conn.execute(f"DROP INDEX imgsim.{index}")
        conn.execute("CREATE INDEX ON imgsim.images_1 USING hnsw (embedding vector_cosine_ops)")
        conn.execute("UPDATE imgsim.meta SET value = '1' WHERE key = 'schema_version'")  # they were schema 1
    assert ["vector_cosine_ops" in d for d in hnsw_indexes(url)] == [True]
    with open_store(url) as store:
        assert ["halfvec_cosine_ops" in d for d in hnsw_indexes(url)] == [True]
        assert store._one("SELECT value FROM imgsim.meta WHERE key = 'schema_version'")[0] == str(SCHEMA_VERSION)
        store._conn.execute("SET enable_seqscan = off")  # 500 rows are cheaper to scan: does the query fit the index?
        unit = vectors / np.linalg.norm(vectors, axis=1, keepdims=True)
        query = np.random.default_rng(6).standard_normal(DIM).astype(np.float32)
        assert store.search(RESNET, query, k=1)[0][0] == sha(int(np.argmax(unit @ query)))
        store._conn.execute("SELECT pg_stat_force_next_flush()")
    assert index_scans(url) >= 1


def test_vectors_wider_than_2000_dimensions_are_indexed_too(pg_url: str) -> None:
    url = create_database(pg_url, "store")
    wide = {**RESNET, "architecture": "resnet50", "embedding_dim": 2048}
    with open_store(url) as store:
        store.put_many(wide, images(np.random.default_rng(7).standard_normal((50, 2048)).astype(np.float32)))
    assert any("halfvec(2048)" in d and "halfvec_cosine_ops" in d for d in hnsw_indexes(url))
