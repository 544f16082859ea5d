"""The SQLite store's memory-mapped int8 snapshot: exact answers, changes seen, rebuilt when it must be.

Every search case of tests/integration/test_store.py also runs through a snapshot there
(the ``sqlite-snapshot`` store); these tests take the snapshot's own risks one by one.
"""

from __future__ import annotations

import logging
import sqlite3
from pathlib import Path

import numpy as np
import pytest

from client.metrics import METRICS, get_metric
from client.store import model_key, open_store, snapshot, sqlite
from client.store.snapshot import Int8Kernel, quantize
from tests.support.store_rows import images, sha

DIM = 200  # not a multiple of snapshot.LANES: the codes are padded
MODEL = {"architecture": "resnet18", "weights_sha256": "5c" * 32, "embedding_dim": DIM, "handler_version": "1.0.0"}
KEY = model_key(MODEL)


@pytest.fixture(autouse=True)
def every_model_has_a_snapshot(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(sqlite, "SNAPSHOT_FROM", 100)


def awkward_vectors(n: int, seed: int = 0) -> np.ndarray:
    """Rows that make int8 codes err: one huge component per row (a coarse step for the rest),
    near-ties (rows a hair apart), zero rows, and all-negative rows."""
    rng = np.random.default_rng(seed)
    v = rng.standard_normal((n, DIM)).astype(np.float32)
    v[::7, rng.integers(0, DIM)] = 60.0  # the other components round to a few steps each
    v[1::5] = v[0::5][: len(v[1::5])] + rng.standard_normal((len(v[1::5]), DIM)).astype(np.float32) * 1e-3
    v[3::97] = 0.0
    v[4::31] = -np.abs(v[4::31])
    return v


def exact_scores(vectors: np.ndarray, query: np.ndarray, metric: str) -> np.ndarray:
    return get_metric(metric).score(query.astype(np.float64), vectors.astype(np.float64))


def exact_top(vectors: np.ndarray, query: np.ndarray, metric: str, k: int, exclude: set[int] = frozenset()) -> list[str]:
    chosen = get_metric(metric)
    scores = exact_scores(vectors, query, metric)
    order = chosen.best(scores, len(scores))
    return [sha(i) for i in order if i not in exclude][:k]


def assert_exact(found: list[tuple[str, float]], vectors: np.ndarray, query: np.ndarray, metric: str,
                 exclude: set[int], k: int) -> None:  # fmt: skip
    """The best k scores, each the exact score of the row returned (tied rows may come in either order)."""
    scores = exact_scores(vectors, query, metric)
    by_sha = {sha(i): scores[i] for i in range(len(vectors)) if i not in exclude}
    best = sorted(by_sha.values(), reverse=get_metric(metric).descending)[:k]
    assert [score for _, score in found] == pytest.approx(best, rel=1e-9, abs=1e-9)
    assert all(by_sha[s] == pytest.approx(score, rel=1e-9, abs=1e-9) for s, score in found)


def snapshot_folders(store_path: Path) -> list[str]:
    root = store_path.with_name(store_path.name + "-vectors")
    return sorted(p.name for p in root.iterdir()) if root.is_dir() else []


def test_estimates_stay_within_their_bounds_with_either_kernel(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    vectors = awkward_vectors(1000)
    path = tmp_path / "s.sqlite"
    with open_store(path) as store:
        store.put_many(MODEL, images(vectors))
        store.search(MODEL, vectors[0], 3)
    found = snapshot.open_newest(path.with_name(path.name + "-vectors"), KEY)
    assert found is not None and len(found) == 1000
    order = found.rows_of([sha(i) for i in range(1000)])
    assert sorted(order) == list(range(1000))
    by_row = {int(r): i for i, r in zip(range(1000), found.rows_of([sha(i) for i in range(1000)]), strict=True)}
    rows_in_order = vectors[[by_row[r] for r in range(1000)]].astype(np.float64)
    rng = np.random.default_rng(5)
    for use_torch in (True, False):
        if not use_torch:
            monkeypatch.setattr(snapshot, "_torch_int8_kernel", lambda codes: None)
        found._kernel = None
        for query in [rng.standard_normal(DIM).astype(np.float32) * s for s in (1e-3, 1.0, 300.0)]:
            est, bound = found.estimates(query)
            err = np.abs(rows_in_order @ query.astype(np.float64) - est)
            assert (err <= bound).all(), f"worst overshoot {np.max(err - bound)} (torch kernel: {use_torch})"
            # loose enough to be safe, tight enough to prune: a few per cent of |q| |m|
            scale = np.linalg.norm(query) * np.linalg.norm(rows_in_order, axis=1)
            assert np.median(bound / np.where(scale > 0, scale, 1)) < 0.03, "bound too loose to prune"


def test_torch_int8_kernel_agrees_with_numpy_at_padded_widths() -> None:
    """torch._weight_int8pack_mm is private: this fails if a torch upgrade changes what it computes."""
    rng = np.random.default_rng(2)
    for width in (64, 512, 1280, 2048):
        codes = rng.integers(-127, 128, (777, width), dtype=np.int8)
        query = rng.standard_normal(width).astype(np.float32)
        kernel = Int8Kernel(codes)
        assert kernel._torch is not None, "torch's int8 kernel is gone: scans fall back to numpy (slow)"
        got, used, rel = kernel.dots(query)
        want = codes.astype(np.float64) @ used.astype(np.float64)
        assert np.all(np.abs(got - want) <= rel * np.abs(want) + 1e-3 * np.abs(codes).sum(1) * np.abs(used).max())


def test_quantized_rows_round_trip_within_their_residual() -> None:
    block = awkward_vectors(300)
    parts = quantize(block, 256)
    rebuilt = parts["codes"][:, :DIM] * parts["scales"][:, None]
    assert (parts["codes"][:, DIM:] == 0).all()
    assert np.all(np.linalg.norm(block - rebuilt, axis=1) <= parts["residuals"])
    assert np.allclose(parts["norms"], np.linalg.norm(block, axis=1), rtol=1e-6)
    assert (parts["scales"][3::97] == 0).all() and (parts["codes"][3::97] == 0).all()


@pytest.mark.parametrize("metric", sorted(METRICS))
def test_search_through_a_snapshot_is_exact_for_every_metric(tmp_path: Path, metric: str) -> None:
    vectors = awkward_vectors(3000)
    rng = np.random.default_rng(3)
    queries = [vectors[i] for i in (0, 1, 7, 5, 6, 4)] + [rng.standard_normal(DIM).astype(np.float32) for _ in range(10)]
    with open_store(tmp_path / "s.sqlite") as store:
        store.put_many(MODEL, images(vectors))
        for n, query in enumerate(queries):
            skip = {n, n + 1} if n % 2 else set()
            found = store.search(MODEL, query, 10, metric, exclude={sha(i) for i in skip})
            assert_exact(found, vectors, query, metric, skip, 10)
    assert len(snapshot_folders(tmp_path / "s.sqlite")) == (metric != "manhattan")  # manhattan scans in RAM


@pytest.mark.parametrize("metric", ["cosine", "dot", "euclidean"])
def test_a_crowd_closer_than_the_codes_can_tell_apart_is_still_ranked_exactly(tmp_path: Path, metric: str) -> None:
    """300 rows that differ by less than an int8 step: only the error bound finds the true best."""
    rng = np.random.default_rng(4)
    base = rng.standard_normal(DIM).astype(np.float32)
    base[0] = 60.0  # a coarse step (60/127) for every other component
    crowd = base + rng.standard_normal((300, DIM)).astype(np.float32) * 0.01
    vectors = np.vstack([crowd, awkward_vectors(700, seed=1)])
    query = base + rng.standard_normal(DIM).astype(np.float32) * 0.01
    with open_store(tmp_path / "s.sqlite") as store:
        store.put_many(MODEL, images(vectors))
        assert_exact(store.search(MODEL, query, 10, metric), vectors, query, metric, set(), 10)


def test_changes_after_the_snapshot_are_searched_without_rewriting_it(tmp_path: Path, monkeypatch) -> None:
    path = tmp_path / "s.sqlite"
    vectors = awkward_vectors(1000)
    reads: list[set[str]] = []
    real = sqlite.SQLiteStore._vectors
    monkeypatch.setattr(sqlite.SQLiteStore, "_vectors",
                        lambda self, model, shas: reads.append(set(shas)) or real(self, model, shas))  # fmt: skip
    with open_store(path) as reader, open_store(path) as writer:
        writer.put_many(MODEL, images(vectors), paths={sha(i): f"/p/{i}.jpg" for i in range(1000)})
        reader.search(MODEL, vectors[0], 5)
        before = snapshot_folders(path)
        newcomer = vectors[500] * 2 + 0.01  # beats row 500 for the query row 500 under dot
        writer.put_many(MODEL, images(newcomer[None], start=5000))
        writer.put_many(MODEL, images(-vectors[10:11], start=10))  # row 10 rewritten
        assert writer.forget_paths(["/p/500.jpg"]) == 1  # row 500 gone
        now = vectors.copy()
        now[10] = -vectors[10]
        for query in (vectors[500], vectors[10], -vectors[10]):
            got = [s for s, _ in reader.search(MODEL, query, 5, "dot")]
            want = exact_top(np.vstack([now, newcomer]), query, "dot", 6, {500})
            assert got == [sha(5000) if s == sha(1000) else s for s in want][:5]
        assert snapshot_folders(path) == before
    assert sum(sha(5000) in shas for shas in reads) == 1  # changed rows read once, not once per query
    with sqlite3.connect(path) as conn:
        logged = {row[0] for row in conn.execute("SELECT sha256 FROM vector_changes")}
    assert logged == {sha(5000), sha(10), sha(500)}


def test_a_snapshot_too_far_behind_is_rewritten_and_its_log_pruned(tmp_path: Path) -> None:
    path = tmp_path / "s.sqlite"
    with open_store(path) as store:
        store.put_many(MODEL, images(awkward_vectors(300)))
        store.search(MODEL, np.ones(DIM, np.float32), 3)
        (first,) = snapshot_folders(path)
        more = awkward_vectors(2500, seed=9)
        store.put_many(MODEL, images(more, start=300))  # 2,500 changed rows: more than max(2000, n/50)
        assert store.search(MODEL, more[-1], 1)[0][0] == sha(2799)
        (second,) = snapshot_folders(path)
    assert second != first
    assert int(second.rsplit("-", 1)[1]) > int(first.rsplit("-", 1)[1])
    with sqlite3.connect(path) as conn:
        assert conn.execute("SELECT COUNT(*) FROM vector_changes").fetchone()[0] == 0


def test_a_new_process_opens_the_snapshot_instead_of_reading_every_row(tmp_path: Path, monkeypatch) -> None:
    path = tmp_path / "s.sqlite"
    vectors = awkward_vectors(500)
    with open_store(path) as store:
        store.put_many(MODEL, images(vectors))
        expected = store.search(MODEL, vectors[42], 5)

    def no_full_read(*_: object) -> None:
        raise AssertionError("read every row again")

    monkeypatch.setattr(sqlite.SQLiteStore, "_blocks", no_full_read)
    with open_store(path) as store:
        assert store.search(MODEL, vectors[42], 5) == expected


@pytest.mark.parametrize("damage", ["meta", "truncated codes", "deleted"])
def test_a_damaged_or_missing_snapshot_is_rebuilt(tmp_path: Path, damage: str) -> None:
    path = tmp_path / "s.sqlite"
    vectors = awkward_vectors(400)
    with open_store(path) as store:
        store.put_many(MODEL, images(vectors))
        expected = store.search(MODEL, vectors[7], 5)
    (folder,) = path.with_name(path.name + "-vectors").iterdir()
    if damage == "meta":
        (folder / "meta.json").write_text("{not json")
    elif damage == "truncated codes":
        codes = folder / "codes.npy"
        codes.write_bytes(codes.read_bytes()[: codes.stat().st_size // 2])
    else:
        for file in folder.iterdir():
            file.unlink()
        folder.rmdir()
    with open_store(path) as store:
        assert store.search(MODEL, vectors[7], 5) == expected
    assert len(snapshot_folders(path)) == 1


def test_an_unwritable_snapshot_place_falls_back_to_ram_with_a_warning(tmp_path: Path, caplog) -> None:
    path = tmp_path / "s.sqlite"
    path.with_name(path.name + "-vectors").write_text("a file where the folder would go")
    vectors = awkward_vectors(400)
    with caplog.at_level(logging.WARNING), open_store(path) as store:
        store.put_many(MODEL, images(vectors))
        got = [s for s, _ in store.search(MODEL, vectors[7], 5)]
        store.put_many(MODEL, images(vectors[:50] + 1))  # rewrites after the failed attempt
    assert got == exact_top(vectors, vectors[7], "cosine", 5)
    assert "cannot write the vector snapshot" in caplog.text and "searching from RAM" in caplog.text
    with sqlite3.connect(path) as conn:  # no snapshot, so nothing is logged for one
        assert conn.execute("SELECT COUNT(*) FROM vector_snapshots").fetchone()[0] == 0
        assert conn.execute("SELECT COUNT(*) FROM vector_changes").fetchone()[0] == 0


def test_prepare_search_writes_a_needed_snapshot_before_any_search(tmp_path: Path, monkeypatch) -> None:
    path = tmp_path / "s.sqlite"
    with open_store(path) as store:
        store.put_many(MODEL, images(awkward_vectors(300)))
        store.prepare_search(MODEL)
        (first,) = snapshot_folders(path)
        store.prepare_search(MODEL)  # current: nothing rewritten
        assert snapshot_folders(path) == [first]
        store.put_many(MODEL, images(awkward_vectors(2500, seed=9), start=300))
        store.prepare_search(MODEL)
        (second,) = snapshot_folders(path)
    assert second != first

    def no_full_read(*_: object) -> None:
        raise AssertionError("read every row again")

    monkeypatch.setattr(sqlite.SQLiteStore, "_blocks", no_full_read)
    with open_store(path) as store:  # the search finds it ready
        assert store.search(MODEL, awkward_vectors(300)[5], 1)[0][0] == sha(5)


def test_index_prepares_the_search_after_a_pass_that_wrote_rows(tmp_path: Path, monkeypatch) -> None:
    from client import reconcile
    from client.embedding import Embedded
    from client.reconcile import Plan
    from client.scan import ImageFile

    prepared = []
    with open_store(tmp_path / "s.sqlite") as store:
        monkeypatch.setattr(store, "prepare_search", lambda identity: prepared.append(identity))
        for sent in (0, 3):
            monkeypatch.setattr(reconcile, "embed_files", lambda *a, sent=sent, **k: Embedded(MODEL, sent=sent))
            photo = ImageFile(str(tmp_path / "a.jpg"), "a.jpg", sha(1), 5)
            reconcile.apply(Plan(unchanged=[photo]), store, None, 32)  # type: ignore[arg-type]
    assert prepared == [MODEL]  # only after the pass that sent something
