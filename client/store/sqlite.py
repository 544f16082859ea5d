"""The SQLite back end (the default): one file beside the user's photos, no server.

Search is exact. A model with SNAPSHOT_FROM vectors or more is searched through a
memory-mapped int8 snapshot beside the file (``client.store.snapshot``: opens at once, scans a
quarter of the bytes, rescores exactly); a smaller one is held in RAM as one float32 matrix
(``client.store.matrix``) and scanned with a matmul.
"""

from __future__ import annotations

import json
import logging
import sqlite3
import threading
from collections.abc import Callable, Collection, Iterable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import numpy as np

from client.metrics import Metric
from client.store.base import (
    IDENTITY_FIELDS,
    EmbeddingStore,
    ModelIdentity,
    PathsBySha,
    StoredFileState,
    StoredImage,
    StoredModel,
    StoreError,
    check_identity_matches,
    check_put,
    failure_rows,
    file_state_of,
    file_state_rows,
    folder_range,
    identity_of,
    model_key,
    pair_rows,
    path_rows,
    stored_model_of,
)  # fmt: skip
from client.store import snapshot
from client.store.matrix import KEYED_METRICS, VectorMatrix
from client.store.migrations import Step, parse_version, upgrade
from client.store.snapshot import Snapshot

logger = logging.getLogger(__name__)

# A model with this many vectors is searched through a snapshot: below it, loading the rows into
# RAM takes under half a second (bench/library_scale.py) and a snapshot would only cost disk.
SNAPSHOT_FROM = 50_000

_NOW = "(strftime('%Y-%m-%dT%H:%M:%fZ', 'now'))"
_SCHEMA_V1 = f"""
CREATE TABLE meta (
    key   TEXT PRIMARY KEY,
    value TEXT NOT NULL
);
CREATE TABLE models (
    model           TEXT PRIMARY KEY,      -- model_key(identity)
    architecture    TEXT NOT NULL,
    weights_sha256  TEXT NOT NULL,
    embedding_dim   INTEGER NOT NULL CHECK (embedding_dim > 0),
    handler_version TEXT NOT NULL,
    created_at      TEXT NOT NULL DEFAULT {_NOW}
);
CREATE TABLE images (
    model       TEXT NOT NULL REFERENCES models (model),
    sha256      TEXT NOT NULL,             -- of the file bytes
    embedding   BLOB NOT NULL,             -- embedding_dim float32, little-endian
    predictions TEXT NOT NULL,             -- JSON list of {{index, label, probability}}
    created_at  TEXT NOT NULL DEFAULT {_NOW},
    PRIMARY KEY (model, sha256)
);
-- Really (model, rowid): walks one model's rows in file order, which loads a model for
-- search several times faster than the primary key's sha256 (random) order.
CREATE INDEX images_by_model ON images (model);
-- Paths belong to contents, not to models: the same file is the same file for every model.
CREATE TABLE paths (
    sha256  TEXT NOT NULL,
    path    TEXT NOT NULL,
    seen_at TEXT NOT NULL DEFAULT {_NOW},
    UNIQUE (sha256, path)
);
CREATE TABLE endpoints (
    url     TEXT NOT NULL,
    name    TEXT NOT NULL,                 -- the model name the server serves it under
    model   TEXT NOT NULL REFERENCES models (model),
    seen_at TEXT NOT NULL DEFAULT {_NOW},
    PRIMARY KEY (url, name)
);
"""


_SCHEMA_V3 = f"""
CREATE TABLE IF NOT EXISTS not_duplicates (
    sha_a     TEXT NOT NULL,               -- the smaller sha256 of the pair
    sha_b     TEXT NOT NULL,
    marked_at TEXT NOT NULL DEFAULT {_NOW},
    PRIMARY KEY (sha_a, sha_b),
    CHECK (sha_a < sha_b)
);
CREATE INDEX IF NOT EXISTS paths_by_path ON paths (path);
"""

_SCHEMA_V4 = f"""
CREATE TABLE IF NOT EXISTS file_state (
    path       TEXT PRIMARY KEY,           -- absolute and resolved
    device     INTEGER NOT NULL,           -- st_dev, st_ino: unsigned 64-bit stored as signed
    inode      INTEGER NOT NULL,
    size       INTEGER NOT NULL,
    mtime_ns   INTEGER NOT NULL,
    sha256     TEXT NOT NULL,
    checked_at TEXT NOT NULL DEFAULT {_NOW}
);
"""

_SCHEMA_V6 = f"""
CREATE TABLE IF NOT EXISTS failures (
    model     TEXT NOT NULL,               -- model_key(identity): refused by the server serving it
    sha256    TEXT NOT NULL,
    code      TEXT NOT NULL,               -- the server's error, as it said it
    message   TEXT NOT NULL,
    failed_at TEXT NOT NULL DEFAULT {_NOW},
    PRIMARY KEY (model, sha256)
);
"""


# Which rows changed after a model's snapshot (client.store.snapshot) was taken: logged by
# triggers, so every writer logs, and only for models that have a snapshot.
_SCHEMA_V5 = [
    """CREATE TABLE IF NOT EXISTS vector_snapshots (
        model           TEXT PRIMARY KEY,
        pruned_through  INTEGER NOT NULL DEFAULT 0  -- changes up to this seq are no longer logged
    )""",
    """CREATE TABLE IF NOT EXISTS vector_changes (
        seq    INTEGER PRIMARY KEY AUTOINCREMENT,
        model  TEXT NOT NULL,
        sha256 TEXT NOT NULL
    )""",
    "CREATE INDEX IF NOT EXISTS vector_changes_by_model ON vector_changes (model, seq)",
    *(f"""CREATE TRIGGER IF NOT EXISTS images_{name} AFTER {event} ON images
        WHEN EXISTS (SELECT 1 FROM vector_snapshots WHERE model = {row}.model)
        BEGIN INSERT INTO vector_changes (model, sha256) VALUES ({row}.model, {row}.sha256); END"""
      for name, event, row in (("added", "INSERT", "NEW"), ("changed", "UPDATE OF embedding", "NEW"),
                               ("removed", "DELETE", "OLD"))),
]  # fmt: skip


def _run_statements(statements: list[str]) -> Callable[[sqlite3.Connection], None]:
    def apply(conn: sqlite3.Connection) -> None:
        for statement in statements:
            conn.execute(statement)

    return apply


def _run_script(script: str) -> Callable[[sqlite3.Connection], None]:
    def apply(conn: sqlite3.Connection) -> None:
        for statement in script.split(";"):
            if statement.strip():
                conn.execute(statement)

    return apply


STEPS: list[Step[sqlite3.Connection]] = [
    Step(1, "the first schema: models, images by (model, sha256), paths by content, endpoints", _run_script(_SCHEMA_V1)),
    Step(2, "PostgreSQL's cosine index moved to halfvec; nothing changes in SQLite", None),
    Step(3, "pairs a user said are not duplicates; paths looked up by folder (index.py)", _run_script(_SCHEMA_V3)),
    Step(4, "each file's stat beside its sha256: an unchanged file is not read again", _run_script(_SCHEMA_V4)),
    Step(5, "a log of changed rows, so a memory-mapped snapshot of a model's vectors stays usable",
         _run_statements(_SCHEMA_V5)),
    Step(6, "contents the server refused, so a rerun does not send a damaged file again", _run_script(_SCHEMA_V6)),
]

# Each batch of ids fits SQLite's smallest historical limit on bound parameters.
_CHUNK = 900


def _in_chunks(values: Sequence[str]) -> Iterator[tuple[list[str], str]]:
    """``values`` in chunks of at most _CHUNK, each with its "?,?,..." for an ``IN (...)``."""
    for i in range(0, len(values), _CHUNK):
        chunk = list(values[i : i + _CHUNK])
        yield chunk, ",".join("?" * len(chunk))


class SQLiteStore(EmbeddingStore):
    """A single SQLite file in WAL mode; safe to share between processes."""

    def __init__(self, path: Path) -> None:
        self._where = str(path)
        if path.is_dir():
            raise StoreError(f"store location {path} is a folder; give a file path such as {path / 'store.sqlite'}")
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            # Autocommit mode: transactions are opened explicitly by _write().
            self._conn = sqlite3.connect(path, timeout=30, isolation_level=None, check_same_thread=False)
        except (OSError, sqlite3.Error) as err:
            raise StoreError(f"cannot open store {path}: {err}; check the path and its permissions") from err
        self._lock = threading.RLock()
        self._matrices: dict[str, VectorMatrix] = {}
        self._data_version = -1
        # derived files beside the store, like SQLite's own -wal and -shm; None once unwritable
        self._snapshot_root: Path | None = path.with_name(path.name + "-vectors")
        self._views: dict[str, tuple[int, _View]] = {}  # model: (data_version, what _view returned)
        try:
            self._prepare()
        except sqlite3.DatabaseError as err:
            self._conn.close()
            raise StoreError(
                f"cannot use {path} as a store: {err}; is it a store file written by this client?"
            ) from err
        except StoreError:
            self._conn.close()
            raise

    def _prepare(self) -> None:
        conn = self._conn
        # Rows are 2 to 5 KiB (512 to 1280 float32): 16 KiB pages hold several with little
        # slack where 4 KiB pages would hold one. Only takes effect on a new, empty file.
        conn.execute("PRAGMA page_size = 16384")
        # WAL lets readers run beside a writer. synchronous=FULL fsyncs every commit:
        # a killed process or a power cut keeps every committed batch, and a batch
        # is one server round trip, so the extra fsync is noise.
        conn.execute("PRAGMA journal_mode = WAL")
        conn.execute("PRAGMA synchronous = FULL")
        conn.execute("PRAGMA foreign_keys = ON")
        with self._write():
            upgrade(conn, STEPS, self._version(), f"store {self._where}", _record_version)

    def _version(self) -> int | None:
        """The stored schema version; None for a new, empty file."""
        tables = {row[0] for row in self._conn.execute("SELECT name FROM sqlite_master WHERE type = 'table'")}
        if not tables:
            return None
        if "meta" not in tables:
            raise StoreError(
                f"{self._where} is a SQLite database of something else (no 'meta' table); give the store its own file"
            )
        row = self._conn.execute("SELECT value FROM meta WHERE key = 'schema_version'").fetchone()
        return parse_version(row[0] if row else None, f"store {self._where}")

    @contextmanager
    def _write(self) -> Iterator[sqlite3.Connection]:
        # IMMEDIATE takes the write lock up front, so two writers wait rather than deadlock.
        with self._lock:
            self._conn.execute("BEGIN IMMEDIATE")
            try:
                yield self._conn
                self._conn.execute("COMMIT")
            except BaseException:
                if self._conn.in_transaction:
                    self._conn.execute("ROLLBACK")
                raise

    def get_many(self, identity: Mapping[str, Any], sha256s: Iterable[str]) -> dict[str, StoredImage]:
        model = model_key(identity)
        wanted = list(dict.fromkeys(sha256s))
        found: dict[str, StoredImage] = {}
        with self._lock:
            for chunk, marks in _in_chunks(wanted):
                rows = self._conn.execute(
                    f"SELECT sha256, embedding, predictions FROM images WHERE model = ? AND sha256 IN ({marks})",
                    (model, *chunk),
                )
                for sha, blob, predictions in rows:
                    found[sha] = StoredImage(
                        sha256=sha,
                        embedding=np.frombuffer(blob, dtype="<f4").astype(np.float32),
                        predictions=json.loads(predictions),
                    )
        return found

    def put_many(
        self, identity: Mapping[str, Any], items: Sequence[StoredImage], paths: PathsBySha | None = None
    ) -> None:
        unique, matrix = check_put(identity, items)
        model = model_key(identity)
        little = matrix.astype("<f4", copy=False)
        rows = [
            (model, item["sha256"], little[i].tobytes(), json.dumps(item["predictions"]))
            for i, item in enumerate(unique)
        ]
        located = path_rows(paths or {})
        with self._lock:
            with self._write() as conn:
                self._ensure_model(model, identity)
                conn.executemany(
                    "INSERT INTO images (model, sha256, embedding, predictions) VALUES (?, ?, ?, ?) "
                    "ON CONFLICT (model, sha256) DO UPDATE SET embedding = excluded.embedding, "
                    "predictions = excluded.predictions",
                    rows,
                )
                self._insert_paths(located)
            self._views.pop(model, None)  # our own commits do not change data_version
            # Only after the commit, so RAM never holds rows the file does not.
            if model in self._matrices:
                self._matrices[model].upsert([item["sha256"] for item in unique], matrix)

    def _ensure_model(self, model: str, identity: Mapping[str, Any]) -> None:
        self._conn.execute(
            f"INSERT INTO models (model, {', '.join(IDENTITY_FIELDS)}) "
            f"VALUES (?, {', '.join('?' * len(IDENTITY_FIELDS))}) ON CONFLICT (model) DO NOTHING",
            (model, *(identity[name] for name in IDENTITY_FIELDS)),
        )
        row = self._conn.execute(f"SELECT {', '.join(IDENTITY_FIELDS)} FROM models WHERE model = ?", (model,)).fetchone()
        check_identity_matches(model, dict(zip(IDENTITY_FIELDS, row, strict=True)), identity)

    def _insert_paths(self, rows: list[tuple[str, str]]) -> None:
        self._conn.executemany(
            f"INSERT INTO paths (sha256, path) VALUES (?, ?) ON CONFLICT (sha256, path) DO UPDATE SET seen_at = {_NOW}",
            rows,
        )

    def remember_paths(self, paths: PathsBySha) -> None:
        rows = path_rows(paths)
        with self._write():
            self._insert_paths(rows)

    def remember_endpoint(self, url: str, name: str, identity: Mapping[str, Any]) -> None:
        model = model_key(identity)
        with self._write() as conn:
            self._ensure_model(model, identity)
            conn.execute(
                "INSERT INTO endpoints (url, name, model) VALUES (?, ?, ?) "
                f"ON CONFLICT (url, name) DO UPDATE SET model = excluded.model, seen_at = {_NOW}",
                (url, name, model),
            )

    def endpoint(self, url: str, name: str) -> ModelIdentity | None:
        columns = ", ".join(f"m.{column}" for column in IDENTITY_FIELDS)
        with self._lock:
            row = self._conn.execute(
                f"SELECT {columns} FROM endpoints AS e JOIN models AS m USING (model) WHERE e.url = ? AND e.name = ?",
                (url, name),
            ).fetchone()
        return None if row is None else identity_of(row)

    def count(self, identity: Mapping[str, Any]) -> int:
        with self._lock:
            return self._conn.execute("SELECT COUNT(*) FROM images WHERE model = ?", (model_key(identity),)).fetchone()[0]

    def models(self) -> list[StoredModel]:
        with self._lock:
            rows = self._conn.execute(
                f"SELECT m.model, {', '.join(f'm.{c}' for c in IDENTITY_FIELDS)}, "
                "(SELECT COUNT(*) FROM images AS i WHERE i.model = m.model) FROM models AS m ORDER BY m.model"
            ).fetchall()
        return [stored_model_of(row) for row in rows]

    def paths(self, identity: Mapping[str, Any], sha256s: Iterable[str] | None = None) -> dict[str, list[str]]:
        model = model_key(identity)
        select = "SELECT p.sha256, p.path FROM paths AS p JOIN images AS i ON i.sha256 = p.sha256 AND i.model = ?"
        order = " ORDER BY p.seen_at DESC, p.path"
        if sha256s is None:
            queries = [(select + order, [model])]
        else:
            wanted = list(dict.fromkeys(sha256s))
            queries = [(f"{select} WHERE p.sha256 IN ({marks}){order}", [model, *chunk])
                       for chunk, marks in _in_chunks(wanted)]  # fmt: skip
        found: dict[str, list[str]] = {}
        with self._lock:
            for query, params in queries:
                for sha, path in self._conn.execute(query, params):
                    found.setdefault(sha, []).append(path)
        return found

    def known_paths(self, under: str) -> dict[str, str]:
        with self._lock:
            rows = self._conn.execute(
                "SELECT path, sha256 FROM paths WHERE path >= ? AND path < ? ORDER BY seen_at", folder_range(under)
            ).fetchall()
        return dict(rows)  # a path seen with several contents: the latest one

    def forget_paths(self, paths: Iterable[str]) -> int:
        wanted = list(dict.fromkeys(paths))
        with self._write() as conn:
            touched: set[str] = set()
            for chunk, marks in _in_chunks(wanted):
                touched.update(row[0] for row in conn.execute(f"SELECT sha256 FROM paths WHERE path IN ({marks})", chunk))
                conn.execute(f"DELETE FROM paths WHERE path IN ({marks})", chunk)
                conn.execute(f"DELETE FROM file_state WHERE path IN ({marks})", chunk)
            # contents still seen elsewhere keep their vectors (the (sha256, path) key makes this a lookup)
            gone = [sha for sha in sorted(touched) if not conn.execute("SELECT 1 FROM paths WHERE sha256 = ?", (sha,)).fetchone()]
            for chunk, marks in _in_chunks(gone):
                conn.execute(f"DELETE FROM images WHERE sha256 IN ({marks})", chunk)
        if gone:
            self._matrices.clear()  # rows left the file: reload on the next search
            self._views.clear()
        return len(gone)

    def file_states(self, paths: Iterable[str]) -> dict[str, StoredFileState]:
        wanted = list(dict.fromkeys(paths))
        found: dict[str, StoredFileState] = {}
        with self._lock:
            for chunk, marks in _in_chunks(wanted):
                rows = self._conn.execute(
                    f"SELECT path, device, inode, size, mtime_ns, sha256 FROM file_state WHERE path IN ({marks})",
                    chunk,
                )
                found.update((row[0], file_state_of(row)) for row in rows)
        return found

    def remember_file_states(self, states: Sequence[StoredFileState]) -> None:
        rows = file_state_rows(states)
        if not rows:
            return
        with self._write() as conn:
            conn.executemany(
                "INSERT INTO file_state (path, device, inode, size, mtime_ns, sha256) VALUES (?, ?, ?, ?, ?, ?) "
                "ON CONFLICT (path) DO UPDATE SET device = excluded.device, inode = excluded.inode, "
                f"size = excluded.size, mtime_ns = excluded.mtime_ns, sha256 = excluded.sha256, checked_at = {_NOW}",
                rows,
            )

    def remember_failures(self, identity: Mapping[str, Any], failures: Mapping[str, Mapping[str, str]]) -> None:
        rows = failure_rows(model_key(identity), failures)
        if not rows:
            return
        with self._write() as conn:
            conn.executemany(
                "INSERT INTO failures (model, sha256, code, message) VALUES (?, ?, ?, ?) ON CONFLICT (model, sha256) "
                f"DO UPDATE SET code = excluded.code, message = excluded.message, failed_at = {_NOW}",
                rows,
            )

    def failures(self, identity: Mapping[str, Any], sha256s: Iterable[str]) -> dict[str, dict[str, str]]:
        model = model_key(identity)
        found: dict[str, dict[str, str]] = {}
        with self._lock:
            for chunk, marks in _in_chunks(list(dict.fromkeys(sha256s))):
                rows = self._conn.execute(
                    f"SELECT sha256, code, message FROM failures WHERE model = ? AND sha256 IN ({marks})",
                    (model, *chunk),
                )
                found.update((sha, {"code": code, "message": message}) for sha, code, message in rows)
        return found

    def mark_not_duplicates(self, pairs: Iterable[tuple[str, str]]) -> None:
        rows = pair_rows(pairs)
        with self._write() as conn:
            conn.executemany("INSERT INTO not_duplicates (sha_a, sha_b) VALUES (?, ?) ON CONFLICT DO NOTHING", rows)

    def not_duplicates(self) -> set[tuple[str, str]]:
        with self._lock:
            return {(a, b) for a, b in self._conn.execute("SELECT sha_a, sha_b FROM not_duplicates")}

    def _candidates(
        self, model: str, query: np.ndarray, metric: Metric, want: int, exclude: Collection[str]
    ) -> tuple[list[str], np.ndarray]:
        with self._lock:
            view = self._view(model) if metric.name in KEYED_METRICS and self._snapshot_root else None
            if view is not None:
                found, changed, fresh = view
                _check_width(model, query, found.dim)
                return found.candidates(query, metric, want, exclude, changed, fresh,
                                        lambda shas: self._vectors(model, shas))  # fmt: skip
            matrix = self._matrix(model)
            if matrix is None or not matrix.shas:
                return [], np.empty((0, len(query)), dtype=np.float32)
            _check_width(model, query, matrix.dim)
            rows = matrix.candidates(query, metric, want, exclude)
            return [matrix.shas[r] for r in rows], matrix.vectors[rows]

    def prepare_search(self, identity: Mapping[str, Any]) -> None:
        with self._lock:
            if self._snapshot_root is not None:
                self._view(model_key(identity))  # writes the snapshot if the model needs one and has none current

    def _vectors(self, model: str, sha256s: Sequence[str]) -> tuple[list[str], np.ndarray]:
        """The stored float32 vectors of those of ``sha256s`` that are stored."""
        shas: list[str] = []
        blobs: list[bytes] = []
        for chunk, marks in _in_chunks(sha256s):
            rows = self._conn.execute(
                f"SELECT sha256, embedding FROM images WHERE model = ? AND sha256 IN ({marks})", (model, *chunk)
            )
            for sha, blob in rows:
                shas.append(sha)
                blobs.append(blob)
        dim = len(blobs[0]) // 4 if blobs else 0
        return shas, np.frombuffer(b"".join(blobs), dtype="<f4").reshape(len(shas), dim).astype(np.float32)

    def _view(self, model: str, build: bool = True) -> _View | None:
        """The model's snapshot, the sha256s changed since it was taken and the current vectors of those
        still stored (read once per change of the file, not per query); None: search from RAM.

        Taken from disk, or written now when the model has SNAPSHOT_FROM rows and no snapshot
        is usable (none, one older than the change log, or one behind by too many rows).
        """
        conn = self._conn
        conn.execute("BEGIN")  # one read snapshot for the checks
        try:
            version = conn.execute("PRAGMA data_version").fetchone()[0]
            cached = self._views.get(model)
            if cached is not None and cached[0] == version:
                return cached[1]
            row = conn.execute("SELECT pruned_through FROM vector_snapshots WHERE model = ?", (model,)).fetchone()
            found = cached[1][0] if cached is not None else None
            if row is not None and (found is None or found.seq < row[0]):
                found = snapshot.open_newest(self._snapshot_root, model)  # type: ignore[arg-type]
            if row is not None and found is not None and found.seq >= row[0]:
                changed = frozenset(sha for (sha,) in conn.execute(
                    "SELECT DISTINCT sha256 FROM vector_changes WHERE model = ? AND seq > ?", (model, found.seq)))  # fmt: skip
                if len(changed) <= max(2000, len(found) // 50) or not build:
                    self._views[model] = (version, (found, changed, self._vectors(model, sorted(changed))))
                    return self._views[model][1]
            if not build:
                return None
            rows = conn.execute("SELECT COUNT(*) FROM images WHERE model = ?", (model,)).fetchone()[0]
        finally:
            conn.execute("COMMIT")
        if rows < SNAPSHOT_FROM:
            return None
        try:
            self._write_snapshot(model)
        except (OSError, ValueError, sqlite3.Error) as err:  # a full disk, a read-only store
            logger.warning("cannot write the vector snapshot under %s (%s); searching from RAM instead",
                           self._snapshot_root, err)  # fmt: skip
            self._snapshot_root = None
            try:  # no snapshot, so no log to keep: writers would otherwise log every change for nothing
                with self._write() as conn:
                    conn.execute("DELETE FROM vector_snapshots WHERE model = ?", (model,))
                    conn.execute("DELETE FROM vector_changes WHERE model = ?", (model,))
            except sqlite3.Error:
                pass  # a read-only store: it logs nothing new either
            return None
        return self._view(model, build=False)

    def _write_snapshot(self, model: str) -> None:
        with self._write() as conn:  # from here on, every change to the model's rows is logged
            conn.execute("INSERT INTO vector_snapshots (model) VALUES (?) ON CONFLICT (model) DO NOTHING", (model,))
        conn = self._conn
        conn.execute("BEGIN")  # the rows and the log position of one moment
        try:
            seq = conn.execute(
                "SELECT COALESCE(MAX(seq), 0) FROM sqlite_sequence WHERE name = 'vector_changes'"
            ).fetchone()[0]
            dim = conn.execute("SELECT embedding_dim FROM models WHERE model = ?", (model,)).fetchone()[0]
            rows = conn.execute("SELECT COUNT(*) FROM images WHERE model = ?", (model,)).fetchone()[0]
            logger.info("writing a snapshot of %d vectors of %s under %s", rows, model, self._snapshot_root)
            snapshot.write(self._snapshot_root, model, seq, dim, rows, self._blocks(model, dim))  # type: ignore[arg-type]
        finally:
            conn.execute("COMMIT")
        with self._write() as conn:  # changes up to seq are in the snapshot: stop keeping them
            conn.execute(
                "UPDATE vector_snapshots SET pruned_through = MAX(pruned_through, ?) WHERE model = ?", (seq, model)
            )
            conn.execute("DELETE FROM vector_changes WHERE model = ? AND seq <= ?", (model, seq))

    def _matrix(self, model: str) -> VectorMatrix | None:
        """The model's vectors in RAM, loaded on first use and reloaded if another connection wrote."""
        conn = self._conn
        conn.execute("BEGIN")  # one snapshot for the version and the rows
        try:
            # data_version changes only for commits of *other* connections; ours are
            # already applied to the matrices by put_many.
            version = conn.execute("PRAGMA data_version").fetchone()[0]
            if version != self._data_version:
                self._matrices.clear()
                self._data_version = version
            if model not in self._matrices:
                loaded = self._load(model)
                if loaded is None:
                    return None
                self._matrices[model] = loaded
            return self._matrices[model]
        finally:
            conn.execute("COMMIT")

    def _load(self, model: str) -> VectorMatrix | None:
        row = self._conn.execute("SELECT embedding_dim FROM models WHERE model = ?", (model,)).fetchone()
        if row is None:
            return None
        matrix = VectorMatrix(dim=row[0])
        # Exactly sized up front: growing a matrix of millions of rows costs seconds of copying.
        matrix.reserve(self._conn.execute("SELECT COUNT(*) FROM images WHERE model = ?", (model,)).fetchone()[0])
        for shas, block in self._blocks(model, matrix.dim):
            matrix.append(shas, block)  # unique: primary key
        return matrix

    def _blocks(self, model: str, dim: int) -> Iterator[tuple[Sequence[str], np.ndarray]]:
        """The model's (sha256s, float32 vectors) in file order, about 8 MiB at a time."""
        cursor = self._conn.execute(
            "SELECT sha256, embedding FROM images INDEXED BY images_by_model WHERE model = ?", (model,)
        )
        # Batches of ~8 MiB stay below malloc's mmap threshold, so each reuses the last
        # one's memory instead of page-faulting in fresh pages (seconds at a million rows).
        while batch := cursor.fetchmany(max(1, 2**23 // (4 * dim))):
            shas, blobs = zip(*batch, strict=True)
            block = np.frombuffer(b"".join(blobs), dtype="<f4").reshape(len(shas), dim)
            yield shas, block.astype(np.float32, copy=False)

    def close(self) -> None:
        with self._lock:
            self._matrices.clear()
            self._views.clear()
            self._conn.close()


# A snapshot, the sha256s changed since, and the current (sha256s, vectors) of those still stored.
_View = tuple[Snapshot, frozenset[str], tuple[list[str], np.ndarray]]


def _check_width(model: str, query: np.ndarray, dim: int) -> None:
    if len(query) != dim:
        raise ValueError(f"query has {len(query)} values, but model {model} makes ({dim},) vectors")


def _record_version(conn: sqlite3.Connection, version: int) -> None:
    conn.execute(
        "INSERT INTO meta (key, value) VALUES ('schema_version', ?) ON CONFLICT (key) DO UPDATE SET value = excluded.value",
        (str(version),),
    )
