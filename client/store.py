"""The store of seen images: embeddings keyed by file content and model identity.

A row is found by (model key, sha256 of the file bytes), so identical bytes are
embedded once per model and a different model never reuses another's vectors.
Two back ends share one interface:

- SQLite (default): one file, no server. Search is exact: every vector of the
  model is held in RAM as one float32 matrix and scanned with a matmul.
- PostgreSQL + pgvector (``postgresql://`` locations): for stores that outgrow a
  machine. Search walks an HNSW index where one exists.

Both back ends only *find candidates*; the final scores always come from
``client.metrics``, so the two give the same numbers for the same vectors.
"""

from __future__ import annotations

import json
import os
import re
import sqlite3
import sys
import threading
from abc import ABC, abstractmethod
from collections.abc import Collection, Iterable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from types import TracebackType
from typing import Any, TypedDict
from urllib.parse import urlsplit

import numpy as np

from client.metrics import Metric, get_metric

SCHEMA_VERSION = 1

_SHA256 = re.compile(r"[0-9a-f]{64}")
# Rescoring a few more candidates than asked for absorbs float32 rounding in the
# fast candidate scan (and the approximation of an HNSW walk) at the boundary.
_EXTRA_CANDIDATES = 16
# The smallest HNSW candidate list a pgvector walk keeps (hnsw.ef_search; pgvector's default is 40):
# below 100, exact top-1 on random data starts to slip (tests/test_store.py).
_EF_SEARCH_FLOOR = 100


class ModelIdentity(TypedDict):
    """Which model made an embedding, as the server reports it in every response."""

    architecture: str
    weights_sha256: str
    embedding_dim: int
    handler_version: str


class StoredModel(ModelIdentity):
    model: str  # model_key(identity)
    count: int  # images stored for it


class StoredImage(TypedDict):
    """One embedded image."""

    sha256: str
    embedding: np.ndarray  # float32, shape (embedding_dim,)
    predictions: list[dict[str, Any]]  # top-k as served: {"index", "label", "probability"}


class StoreError(Exception):
    """The store cannot be used as asked; the message says what to do next."""


def model_key(identity: Mapping[str, Any]) -> str:
    """A stable, readable name for a model, e.g. ``resnet18/5c106cde386e/1.0.0``.

    Twelve hex digits of the weights hash tell weights files apart in practice;
    the full identity is stored beside the key and checked on every write, so a
    clash could never mix two models' vectors silently.
    """
    _check_identity(identity)
    return f"{identity['architecture']}/{identity['weights_sha256'][:12]}/{identity['handler_version']}"


def open_store(location: str | os.PathLike[str]) -> EmbeddingStore:
    """``postgresql://user@host:port/db`` opens PostgreSQL; anything else is a SQLite file path."""
    text = os.fspath(location)
    if text.startswith(("postgresql://", "postgres://")):
        return PostgresStore(text)
    return SQLiteStore(Path(text).expanduser())


class EmbeddingStore(ABC):
    """What the client needs from a store; see the module docstring for the back ends."""

    @abstractmethod
    def get_many(self, model: str, sha256s: Iterable[str]) -> dict[str, StoredImage]:
        """The stored images among ``sha256s``; absent ones are simply missing."""

    @abstractmethod
    def put_many(
        self,
        model: str,
        identity: Mapping[str, Any],
        items: Sequence[StoredImage],
        paths: Mapping[str, str | Collection[str]] | None = None,
    ) -> None:
        """Insert or replace ``items`` in one transaction, and record ``paths`` (sha256 -> path or paths)."""

    @abstractmethod
    def remember_paths(self, model: str, paths: Mapping[str, str | Collection[str]]) -> None:
        """Record where already-stored contents were seen (sha256 -> path or paths)."""

    @abstractmethod
    def remember_endpoint(self, url: str, name: str, identity: Mapping[str, Any]) -> None:
        """Note that the server at ``url`` serves model ``identity`` under ``name``."""

    @abstractmethod
    def endpoint(self, url: str, name: str) -> ModelIdentity | None:
        """The identity last noted for ``url`` and ``name``: a rerun finds its vectors without asking the server."""

    @abstractmethod
    def count(self, model: str) -> int: ...

    @abstractmethod
    def models(self) -> list[StoredModel]: ...

    @abstractmethod
    def paths(self, model: str, sha256s: Iterable[str] | None = None) -> dict[str, list[str]]:
        """Known paths per stored sha256 of ``model``, most recently seen first."""

    @abstractmethod
    def close(self) -> None: ...

    @abstractmethod
    def _candidates(
        self, model: str, query: np.ndarray, metric: Metric, want: int, exclude: Collection[str]
    ) -> tuple[list[str], np.ndarray]:
        """Up to ``want`` likely-best (sha256s, float32 vectors), never one in ``exclude``."""

    def search(
        self, model: str, query: np.ndarray, k: int, metric: str = "cosine", exclude: Collection[str] = ()
    ) -> list[tuple[str, float]]:
        """The ``k`` stored images nearest to ``query`` as (sha256, score), best first."""
        chosen = get_metric(metric)
        vector = np.asarray(query, dtype=np.float32)
        if vector.ndim != 1 or not np.isfinite(vector).all():
            raise ValueError(f"query must be one finite vector, got shape {vector.shape}")
        if k <= 0:
            return []
        shas, vectors = self._candidates(model, vector, chosen, k + _EXTRA_CANDIDATES, frozenset(exclude))
        if not shas:
            return []
        # float64 so that both back ends report the reference value, not float32 noise.
        scores = chosen.score(vector.astype(np.float64), vectors.astype(np.float64))
        return [(shas[i], float(scores[i])) for i in chosen.best(scores, k)]

    def __enter__(self) -> EmbeddingStore:
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()


# --- checks shared by both back ends -------------------------------------------------------------


def _check_identity(identity: Mapping[str, Any]) -> None:
    expected = ModelIdentity.__annotations__
    missing = [name for name in expected if name not in identity]
    if missing:
        raise ValueError(f"model identity lacks {', '.join(missing)}: {dict(identity)!r}")
    dim = identity["embedding_dim"]
    if not isinstance(dim, int) or isinstance(dim, bool) or dim <= 0:
        raise ValueError(f"model identity has a bad embedding_dim {dim!r}")


def _check_put(
    model: str, identity: Mapping[str, Any], items: Sequence[StoredImage]
) -> tuple[list[StoredImage], np.ndarray]:
    """Items deduplicated by sha256 (last wins) and their embeddings as one float32 matrix."""
    if model != model_key(identity):
        raise ValueError(f"model {model!r} is not model_key(identity) = {model_key(identity)!r}")
    unique = list({item["sha256"]: item for item in items}.values())
    dim = identity["embedding_dim"]
    for item in unique:
        _check_sha(item["sha256"])
        if np.shape(item["embedding"]) != (dim,):
            raise ValueError(
                f"embedding of {item['sha256']} has shape {np.shape(item['embedding'])}, "
                f"but model {model} makes ({dim},) vectors"
            )
    matrix = np.array([item["embedding"] for item in unique], dtype=np.float32).reshape(len(unique), dim)
    if not np.isfinite(matrix).all():
        # One NaN would make every later search of this model meaningless.
        raise ValueError("embeddings contain NaN or infinity; refusing to store them")
    return unique, matrix


def _check_sha(sha: str) -> None:
    if not isinstance(sha, str) or not _SHA256.fullmatch(sha):
        raise ValueError(f"expected a lowercase hex sha256 of the file bytes, got {sha!r}")


def _check_identity_matches(model: str, stored: Mapping[str, Any], identity: Mapping[str, Any]) -> None:
    for name in ModelIdentity.__annotations__:
        if stored[name] != identity[name]:
            raise StoreError(
                f"model key {model!r} is already stored with {name}={stored[name]!r}, not {identity[name]!r}; "
                "use a new store file (or bump handler_version) for this model"
            )


def _path_rows(paths: Mapping[str, str | Collection[str]]) -> list[tuple[str, str]]:
    rows: list[tuple[str, str]] = []
    for sha, where in paths.items():
        _check_sha(sha)
        rows.extend((sha, p) for p in ([where] if isinstance(where, str) else where))
    return rows


def _check_version(found: str | None, where: str) -> None:
    try:
        version = int(found) if found is not None else None
    except ValueError:
        version = None
    if version == SCHEMA_VERSION:
        return
    if version is None:
        raise StoreError(f"{where} has an unreadable schema version {found!r}; it was not written by this client")
    if version > SCHEMA_VERSION:
        raise StoreError(
            f"{where} uses store schema {version}, newer than this client's {SCHEMA_VERSION}; "
            "upgrade the client, or use another store location"
        )
    raise StoreError(
        f"{where} uses store schema {version}, older than this client's {SCHEMA_VERSION}, and no migration "
        "exists; move it aside and rerun (embeddings are recomputed), or use the client version that wrote it"
    )


# --- SQLite --------------------------------------------------------------------------------------

_SQLITE_NOW = "(strftime('%Y-%m-%dT%H:%M:%fZ', 'now'))"
_SQLITE_SCHEMA = f"""
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
    created_at      TEXT NOT NULL DEFAULT {_SQLITE_NOW}
);
CREATE TABLE images (
    model       TEXT NOT NULL REFERENCES models (model),
    sha256      TEXT NOT NULL,             -- of the file bytes
    embedding   BLOB NOT NULL,             -- embedding_dim float32, little-endian
    predictions TEXT NOT NULL,             -- JSON list of {{index, label, probability}}
    created_at  TEXT NOT NULL DEFAULT {_SQLITE_NOW},
    PRIMARY KEY (model, sha256)
);
-- Really (model, rowid): walks one model's rows in file order, which loads a model for
-- search several times faster than the primary key's sha256 (random) order.
CREATE INDEX images_by_model ON images (model);
-- Paths belong to contents, not to models: the same file is the same file for every model.
CREATE TABLE paths (
    sha256  TEXT NOT NULL,
    path    TEXT NOT NULL,
    seen_at TEXT NOT NULL DEFAULT {_SQLITE_NOW},
    UNIQUE (sha256, path)
);
CREATE TABLE endpoints (
    url     TEXT NOT NULL,
    name    TEXT NOT NULL,                 -- the model name the server serves it under
    model   TEXT NOT NULL REFERENCES models (model),
    seen_at TEXT NOT NULL DEFAULT {_SQLITE_NOW},
    PRIMARY KEY (url, name)
);
"""
# Each batch of ids fits SQLite's smallest historical limit on bound parameters.
_SQLITE_CHUNK = 900


@dataclass
class _Matrix:
    """Every stored vector of one model, in RAM, so that a search is one matmul."""

    dim: int
    shas: list[str] = field(default_factory=list)
    rows: dict[str, int] = field(default_factory=dict)
    vectors: np.ndarray = field(init=False)  # (capacity, dim); rows [:n] are live
    sqnorms: np.ndarray = field(init=False)  # squared norms, for euclidean
    inv_norms: np.ndarray = field(init=False)  # 1/norm (0 for a zero vector), for cosine

    def __post_init__(self) -> None:
        self.vectors = np.empty((0, self.dim), dtype=np.float32)
        self.sqnorms = np.empty(0, dtype=np.float32)
        self.inv_norms = np.empty(0, dtype=np.float32)

    def upsert(self, shas: Sequence[str], matrix: np.ndarray) -> None:
        """Replace the rows of known ``shas`` and append the others (``shas`` has no duplicates)."""
        if self.rows.keys().isdisjoint(shas):  # only new images: one slice
            self.append(shas, matrix)
            return
        self.reserve(len(self.shas) + len(shas))
        for sha in shas:
            if self.rows.setdefault(sha, len(self.shas)) == len(self.shas):
                self.shas.append(sha)
        self._fill(np.fromiter((self.rows[sha] for sha in shas), dtype=np.int64, count=len(shas)), matrix)

    def append(self, shas: Sequence[str], matrix: np.ndarray) -> None:
        """Add rows for ``shas``, none of which is present yet."""
        start = len(self.shas)
        self.reserve(start + len(shas))
        self.rows.update(zip(shas, range(start, start + len(shas)), strict=True))
        self.shas.extend(shas)
        self._fill(slice(start, start + len(shas)), matrix)

    def _fill(self, at: slice | np.ndarray, matrix: np.ndarray) -> None:
        self.vectors[at] = matrix
        sq = np.einsum("ij,ij->i", matrix, matrix)
        self.sqnorms[at] = sq
        self.inv_norms[at] = np.divide(1.0, np.sqrt(sq), out=np.zeros_like(sq), where=sq > 0)

    def reserve(self, n: int) -> None:
        """Room for ``n`` rows; grows by doubling so a stream of small puts copies rarely."""
        if n <= len(self.vectors):
            return
        capacity = max(n, 2 * len(self.vectors), 1024)
        for name in ("vectors", "sqnorms", "inv_norms"):
            old = getattr(self, name)
            grown = np.empty((capacity, *old.shape[1:]), dtype=np.float32)
            grown[: len(old)] = old
            setattr(self, name, grown)

    def candidates(self, query: np.ndarray, metric: Metric, want: int, exclude: Collection[str]) -> np.ndarray:
        """Rows of the ``want`` best by a proxy that ranks like ``metric`` and costs one matmul."""
        n = len(self.shas)
        live = self.vectors[:n]
        # Each proxy keeps the metric's direction (similarities high, distances low), so
        # Metric.best picks from it; the exact score is computed afterwards on the few winners.
        if metric.name in ("cosine", "angular"):
            proxy = live @ query
            proxy *= self.inv_norms[:n]  # the query's own norm scales every row alike
            if metric.name == "angular":  # the angle shrinks as the cosine grows
                np.negative(proxy, out=proxy)
        elif metric.name == "dot":
            proxy = live @ query
        elif metric.name == "euclidean":  # |m - q|^2 = |m|^2 - 2 m.q + |q|^2, |q|^2 constant
            proxy = live @ query
            proxy *= -2.0
            proxy += self.sqnorms[:n]
        else:  # no matmul shortcut (manhattan): exact scores, in slices to bound memory
            proxy = np.concatenate(
                [metric.score(query, live[i : i + 65536]) for i in range(0, n, 65536)] or [np.empty(0)]
            )
        drop = [self.rows[sha] for sha in exclude if sha in self.rows]
        if drop:
            proxy[drop] = -np.inf if metric.descending else np.inf
        best = metric.best(proxy, want + len(drop))
        return best[~np.isin(best, drop)][:want] if drop else best


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
        self._matrices: dict[str, _Matrix] = {}
        self._data_version = -1
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
            tables = {row[0] for row in conn.execute("SELECT name FROM sqlite_master WHERE type = 'table'")}
            if not tables:
                for statement in _SQLITE_SCHEMA.split(";"):
                    if statement.strip():
                        conn.execute(statement)
                conn.execute("INSERT INTO meta (key, value) VALUES ('schema_version', ?)", (str(SCHEMA_VERSION),))
                return
            if "meta" not in tables:
                raise StoreError(
                    f"{self._where} is a SQLite database of something else (no 'meta' table); "
                    "give the store its own file"
                )
            row = conn.execute("SELECT value FROM meta WHERE key = 'schema_version'").fetchone()
            _check_version(row[0] if row else None, f"store {self._where}")

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

    def get_many(self, model: str, sha256s: Iterable[str]) -> dict[str, StoredImage]:
        wanted = list(dict.fromkeys(sha256s))
        found: dict[str, StoredImage] = {}
        with self._lock:
            for i in range(0, len(wanted), _SQLITE_CHUNK):
                chunk = wanted[i : i + _SQLITE_CHUNK]
                rows = self._conn.execute(
                    "SELECT sha256, embedding, predictions FROM images "
                    f"WHERE model = ? AND sha256 IN ({','.join('?' * len(chunk))})",
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
        self,
        model: str,
        identity: Mapping[str, Any],
        items: Sequence[StoredImage],
        paths: Mapping[str, str | Collection[str]] | None = None,
    ) -> None:
        unique, matrix = _check_put(model, identity, items)
        little = matrix.astype("<f4", copy=False)
        rows = [
            (model, item["sha256"], little[i].tobytes(), json.dumps(item["predictions"]))
            for i, item in enumerate(unique)
        ]
        path_rows = _path_rows(paths or {})
        with self._lock:
            with self._write() as conn:
                self._ensure_model(model, identity)
                conn.executemany(
                    "INSERT INTO images (model, sha256, embedding, predictions) VALUES (?, ?, ?, ?) "
                    "ON CONFLICT (model, sha256) DO UPDATE SET embedding = excluded.embedding, "
                    "predictions = excluded.predictions",
                    rows,
                )
                self._insert_paths(path_rows)
            # Only after the commit, so RAM never holds rows the file does not.
            if model in self._matrices:
                self._matrices[model].upsert([item["sha256"] for item in unique], matrix)

    def _ensure_model(self, model: str, identity: Mapping[str, Any]) -> None:
        columns = ModelIdentity.__annotations__
        self._conn.execute(
            f"INSERT INTO models (model, {', '.join(columns)}) VALUES (?, {', '.join('?' * len(columns))}) "
            "ON CONFLICT (model) DO NOTHING",
            (model, *(identity[name] for name in columns)),
        )
        row = self._conn.execute(f"SELECT {', '.join(columns)} FROM models WHERE model = ?", (model,)).fetchone()
        _check_identity_matches(model, dict(zip(columns, row, strict=True)), identity)

    def _insert_paths(self, rows: list[tuple[str, str]]) -> None:
        self._conn.executemany(
            "INSERT INTO paths (sha256, path) VALUES (?, ?) "
            f"ON CONFLICT (sha256, path) DO UPDATE SET seen_at = {_SQLITE_NOW}",
            rows,
        )

    def remember_paths(self, model: str, paths: Mapping[str, str | Collection[str]]) -> None:
        rows = _path_rows(paths)
        with self._write():
            self._insert_paths(rows)

    def remember_endpoint(self, url: str, name: str, identity: Mapping[str, Any]) -> None:
        model = model_key(identity)
        with self._write() as conn:
            self._ensure_model(model, identity)
            conn.execute(
                "INSERT INTO endpoints (url, name, model) VALUES (?, ?, ?) "
                f"ON CONFLICT (url, name) DO UPDATE SET model = excluded.model, seen_at = {_SQLITE_NOW}",
                (url, name, model),
            )

    def endpoint(self, url: str, name: str) -> ModelIdentity | None:
        columns = ", ".join(f"m.{column}" for column in ModelIdentity.__annotations__)
        with self._lock:
            row = self._conn.execute(
                f"SELECT {columns} FROM endpoints AS e JOIN models AS m USING (model) WHERE e.url = ? AND e.name = ?",
                (url, name),
            ).fetchone()
        return None if row is None else _identity(row)

    def count(self, model: str) -> int:
        with self._lock:
            return self._conn.execute("SELECT COUNT(*) FROM images WHERE model = ?", (model,)).fetchone()[0]

    def models(self) -> list[StoredModel]:
        with self._lock:
            rows = self._conn.execute(
                "SELECT m.model, m.architecture, m.weights_sha256, m.embedding_dim, m.handler_version, "
                "(SELECT COUNT(*) FROM images AS i WHERE i.model = m.model) FROM models AS m ORDER BY m.model"
            ).fetchall()
        return [_stored_model(row) for row in rows]

    def paths(self, model: str, sha256s: Iterable[str] | None = None) -> dict[str, list[str]]:
        select = "SELECT p.sha256, p.path FROM paths AS p JOIN images AS i ON i.sha256 = p.sha256 AND i.model = ?"
        order = " ORDER BY p.seen_at DESC, p.path"
        if sha256s is None:
            queries = [(select + order, [model])]
        else:
            wanted = list(dict.fromkeys(sha256s))
            chunks = [wanted[i : i + _SQLITE_CHUNK] for i in range(0, len(wanted), _SQLITE_CHUNK)]
            queries = [
                (f"{select} WHERE p.sha256 IN ({','.join('?' * len(chunk))}){order}", [model, *chunk])
                for chunk in chunks
            ]
        found: dict[str, list[str]] = {}
        with self._lock:
            for query, params in queries:
                for sha, path in self._conn.execute(query, params):
                    found.setdefault(sha, []).append(path)
        return found

    def _candidates(
        self, model: str, query: np.ndarray, metric: Metric, want: int, exclude: Collection[str]
    ) -> tuple[list[str], np.ndarray]:
        with self._lock:
            matrix = self._matrix(model)
            if matrix is None or not matrix.shas:
                return [], np.empty((0, len(query)), dtype=np.float32)
            if len(query) != matrix.dim:
                raise ValueError(f"query has {len(query)} values, but model {model} makes ({matrix.dim},) vectors")
            rows = matrix.candidates(query, metric, want, exclude)
            return [matrix.shas[r] for r in rows], matrix.vectors[rows]

    def _matrix(self, model: str) -> _Matrix | None:
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

    def _load(self, model: str) -> _Matrix | None:
        row = self._conn.execute("SELECT embedding_dim FROM models WHERE model = ?", (model,)).fetchone()
        if row is None:
            return None
        matrix = _Matrix(dim=row[0])
        # Exactly sized up front: growing a matrix of millions of rows costs seconds of copying.
        matrix.reserve(self._conn.execute("SELECT COUNT(*) FROM images WHERE model = ?", (model,)).fetchone()[0])
        cursor = self._conn.execute(
            "SELECT sha256, embedding FROM images INDEXED BY images_by_model WHERE model = ?", (model,)
        )
        # Batches of ~8 MiB stay below malloc's mmap threshold, so each reuses the last
        # one's memory instead of page-faulting in fresh pages (seconds at a million rows).
        while batch := cursor.fetchmany(max(1, 2**23 // (4 * matrix.dim))):
            shas, blobs = zip(*batch, strict=True)
            block = np.frombuffer(b"".join(blobs), dtype="<f4").reshape(len(shas), matrix.dim)
            matrix.append(shas, block.astype(np.float32, copy=False))  # unique: primary key
        return matrix

    def close(self) -> None:
        with self._lock:
            self._matrices.clear()
            self._conn.close()


def _identity(row: Sequence[Any]) -> ModelIdentity:
    architecture, weights_sha256, embedding_dim, handler_version = row
    return ModelIdentity(
        architecture=architecture,
        weights_sha256=weights_sha256,
        embedding_dim=embedding_dim,
        handler_version=handler_version,
    )


def _stored_model(row: Sequence[Any]) -> StoredModel:
    model, architecture, weights_sha256, embedding_dim, handler_version, count = row
    return StoredModel(
        model=model,
        architecture=architecture,
        weights_sha256=weights_sha256,
        embedding_dim=embedding_dim,
        handler_version=handler_version,
        count=count,
    )


# --- PostgreSQL + pgvector -----------------------------------------------------------------------

# Everything lives in one schema so that a shared database's own tables never collide with ours.
_PG_SCHEMA = f"""
CREATE SCHEMA IF NOT EXISTS imgsim;
CREATE TABLE imgsim.meta (
    key   text PRIMARY KEY,
    value text NOT NULL
);
CREATE TABLE imgsim.models (
    id              integer GENERATED ALWAYS AS IDENTITY PRIMARY KEY,  -- names the images_<id> table
    model           text NOT NULL UNIQUE,
    architecture    text NOT NULL,
    weights_sha256  text NOT NULL,
    embedding_dim   integer NOT NULL CHECK (embedding_dim > 0),
    handler_version text NOT NULL,
    created_at      timestamptz NOT NULL DEFAULT now()
);
CREATE TABLE imgsim.paths (
    sha256  text NOT NULL,
    path    text NOT NULL,
    seen_at timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (sha256, path)
);
CREATE TABLE imgsim.endpoints (
    url     text NOT NULL,
    name    text NOT NULL,
    model   text NOT NULL REFERENCES imgsim.models (model),
    seen_at timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (url, name)
);
INSERT INTO imgsim.meta (key, value) VALUES ('schema_version', '{SCHEMA_VERSION}')
"""
# One table per model: a vector column needs a fixed dimension for an HNSW index, and
# an index of one model's vectors alone needs no filter on the walk (a shared index
# filtered by model loses recall for a small model beside a large one).
_PG_IMAGES = """
CREATE TABLE {table} (
    sha256      text PRIMARY KEY,
    embedding   vector({dim}) NOT NULL,
    predictions jsonb NOT NULL,
    created_at  timestamptz NOT NULL DEFAULT now()
)
"""
# The cosine HNSW index is over the vectors cast to half precision: ~10% faster walks than
# over float32 (bench/pgvector_query.py), the same recall once the candidates are rescored
# exactly, and pgvector indexes halfvec up to 4,000 dimensions (vector: 2,000), so
# ResNet50's 2,048-d vectors get an index too. Wider ones are scanned exactly.
_PG_HNSW_MAX_DIM = 4000
_PG_INDEX = "CREATE INDEX ON {table} USING hnsw ((embedding::halfvec({dim})) halfvec_cosine_ops)"
_PG_INDEXED_ORDER = "embedding::halfvec({dim}) <=> %(query)s::halfvec({dim})"
# Cosine (and angular, which ranks alike) is the default metric and gets the index;
# dot, euclidean and manhattan are exact scans until someone adds the matching
# opclass index (vector_ip_ops, vector_l2_ops, vector_l1_ops) to images_<id>.
_PG_OPERATORS = {"cosine": "<=>", "angular": "<=>", "dot": "<#>", "euclidean": "<->", "manhattan": "<+>"}
_PG_LOCK = 0x696D6773  # pg_advisory_xact_lock key serialising schema creation


class PostgresStore(EmbeddingStore):
    """Tables in schema ``imgsim`` of a PostgreSQL database with the pgvector extension."""

    def __init__(self, url: str) -> None:
        self._where = _describe_url(url)
        try:  # only PostgreSQL users need these packages
            import pgvector.psycopg  # noqa: F401
            import psycopg
            import psycopg.sql
            import psycopg.types.json
        except ImportError as err:
            raise StoreError(
                f"a postgresql:// store needs the psycopg and pgvector packages ({err}); "
                "install them with: pip install 'psycopg[binary]' pgvector"
            ) from err
        self._psycopg = psycopg
        try:
            self._conn = psycopg.connect(url, autocommit=True, connect_timeout=10)
        except psycopg.Error as err:
            raise StoreError(
                f"cannot reach PostgreSQL at {self._where}: {str(err).strip()}; "
                "check that the server is running and that user, host, port and database are right"
            ) from err
        self._lock = threading.RLock()
        self._tables: dict[str, tuple[int, int]] = {}  # model -> (table id, dim); models are never removed
        try:
            self._prepare()
        except psycopg.Error as err:
            self._conn.close()
            raise StoreError(f"cannot set up the store in {self._where}: {str(err).strip()}") from err
        except StoreError:
            self._conn.close()
            raise

    def _prepare(self) -> None:
        from pgvector.psycopg import register_vector

        with self._conn.transaction():
            self._conn.execute("SELECT pg_advisory_xact_lock(%s)", (_PG_LOCK,))
            try:
                self._conn.execute("CREATE EXTENSION IF NOT EXISTS vector")
            except self._psycopg.Error as err:
                raise StoreError(
                    f"PostgreSQL at {self._where} cannot enable pgvector: {str(err).strip()}; "
                    "install pgvector on the server, or ask an administrator to run CREATE EXTENSION vector"
                ) from err
            if self._one("SELECT to_regclass('imgsim.meta')")[0] is None:
                self._conn.execute(_PG_SCHEMA)
            else:
                row = self._conn.execute("SELECT value FROM imgsim.meta WHERE key = 'schema_version'").fetchone()
                _check_version(row[0] if row else None, f"store {self._where}")
                self._reindex_float32_tables()
        register_vector(self._conn)
        version = self._one("SELECT extversion FROM pg_extension WHERE extname = 'vector'")[0]
        if tuple(int(p) for p in version.split(".")[:2]) >= (0, 8):
            # an iterative scan keeps walking the index when the exclude filter drops rows,
            # instead of returning fewer than asked
            self._conn.execute("SELECT set_config('hnsw.iterative_scan', 'strict_order', false)")
        self._ef_search = ""

    def _reindex_float32_tables(self) -> None:
        """Stores made before the halfvec index had one over float32 vectors, which the
        queries no longer use: build the halfvec one in its place (once; a minute per ~100k)."""
        sql = self._psycopg.sql
        rows = self._conn.execute(
            "SELECT m.id, m.embedding_dim, i.indexname, i.indexdef FROM imgsim.models m "
            "LEFT JOIN pg_indexes i ON i.schemaname = 'imgsim' AND i.tablename = 'images_' || m.id "
            "AND i.indexdef LIKE '%%USING hnsw%%' WHERE m.embedding_dim <= %s",
            (_PG_HNSW_MAX_DIM,),
        ).fetchall()
        current = {table_id for table_id, _, _, definition in rows if definition and "halfvec" in definition}
        for table_id, dim, index, _ in rows:
            if table_id in current:
                continue
            table = sql.Identifier("imgsim", f"images_{table_id}")
            print(f"store {self._where}: building the faster (halfvec) HNSW index of imgsim.images_{table_id}, "
                  "once; about a minute per 100k images", file=sys.stderr)  # fmt: skip
            if index:
                self._conn.execute(sql.SQL("DROP INDEX {}").format(sql.Identifier("imgsim", index)))
            self._conn.execute(sql.SQL(_PG_INDEX).format(table=table, dim=sql.Literal(dim)))
            current.add(table_id)

    def _one(self, query: Any, params: Sequence[Any] = ()) -> tuple[Any, ...]:
        """The single row a query always returns."""
        row = self._conn.execute(query, params).fetchone()
        assert row is not None, query
        return row

    def _table(self, model: str) -> tuple[Any, int] | None:
        """The model's images table (an sql.Identifier) and dimension, if the model is stored."""
        if model not in self._tables:
            row = self._conn.execute(
                "SELECT id, embedding_dim FROM imgsim.models WHERE model = %s", (model,)
            ).fetchone()
            if row is None:
                return None
            self._tables[model] = (row[0], row[1])
        table_id, dim = self._tables[model]
        return self._psycopg.sql.Identifier("imgsim", f"images_{table_id}"), dim

    def get_many(self, model: str, sha256s: Iterable[str]) -> dict[str, StoredImage]:
        wanted = list(dict.fromkeys(sha256s))
        found: dict[str, StoredImage] = {}
        with self._lock:
            located = self._table(model)
            if located is None or not wanted:
                return found
            query = self._psycopg.sql.SQL(
                "SELECT sha256, embedding, predictions FROM {} WHERE sha256 = ANY(%s)"
            ).format(located[0])
            with self._conn.cursor(binary=True) as cursor:
                for i in range(0, len(wanted), 10000):
                    for sha, vector, predictions in cursor.execute(query, (wanted[i : i + 10000],)):
                        found[sha] = StoredImage(
                            sha256=sha, embedding=vector.to_numpy().copy(), predictions=predictions
                        )
        return found

    def put_many(
        self,
        model: str,
        identity: Mapping[str, Any],
        items: Sequence[StoredImage],
        paths: Mapping[str, str | Collection[str]] | None = None,
    ) -> None:
        unique, matrix = _check_put(model, identity, items)
        path_rows = _path_rows(paths or {})
        sql, jsonb = self._psycopg.sql, self._psycopg.types.json.Jsonb
        with self._lock, self._forget_model_on_error(model), self._conn.transaction():
            table = self._ensure_model(model, identity)
            dim = identity["embedding_dim"]
            self._conn.execute(
                sql.SQL(
                    "CREATE TEMP TABLE incoming (sha256 text, embedding vector({}), predictions jsonb) ON COMMIT DROP"
                ).format(sql.Literal(dim))
            )
            # Binary COPY then one upsert: far faster than row-by-row INSERTs.
            with self._conn.cursor() as cursor, cursor.copy("COPY incoming FROM STDIN (FORMAT BINARY)") as copy:
                copy.set_types(["text", "vector", "jsonb"])
                for i, item in enumerate(unique):
                    copy.write_row((item["sha256"], matrix[i], jsonb(item["predictions"])))
            self._conn.execute(
                sql.SQL(
                    "INSERT INTO {} (sha256, embedding, predictions) SELECT sha256, embedding, predictions "
                    "FROM incoming ON CONFLICT (sha256) DO UPDATE SET embedding = EXCLUDED.embedding, "
                    "predictions = EXCLUDED.predictions"
                ).format(table)
            )
            self._insert_paths(path_rows)

    @contextmanager
    def _forget_model_on_error(self, model: str) -> Iterator[None]:
        # A rolled-back put may have cached the id of a table that was never committed.
        try:
            yield
        except BaseException:
            self._tables.pop(model, None)
            raise

    def _ensure_model(self, model: str, identity: Mapping[str, Any]) -> Any:
        sql = self._psycopg.sql
        columns = list(ModelIdentity.__annotations__)
        created = self._conn.execute(
            sql.SQL(
                "INSERT INTO imgsim.models (model, {}) VALUES (%s, {}) ON CONFLICT (model) DO NOTHING RETURNING id"
            ).format(
                sql.SQL(", ").join(map(sql.Identifier, columns)), sql.SQL(", ").join([sql.Placeholder()] * len(columns))
            ),
            (model, *(identity[name] for name in columns)),
        ).fetchone()
        if created is not None:
            # A concurrent writer of the same new model waits on the unique key until this commits.
            table = sql.Identifier("imgsim", f"images_{created[0]}")
            dim = identity["embedding_dim"]
            self._conn.execute(sql.SQL(_PG_IMAGES).format(table=table, dim=sql.Literal(dim)))
            if dim <= _PG_HNSW_MAX_DIM:
                self._conn.execute(sql.SQL(_PG_INDEX).format(table=table, dim=sql.Literal(dim)))
        row = self._one(
            sql.SQL("SELECT {} FROM imgsim.models WHERE model = %s").format(
                sql.SQL(", ").join(map(sql.Identifier, columns))
            ),
            (model,),
        )
        _check_identity_matches(model, dict(zip(columns, row, strict=True)), identity)
        located = self._table(model)
        assert located is not None  # inserted or found just above
        return located[0]

    def _insert_paths(self, rows: list[tuple[str, str]]) -> None:
        if rows:
            with self._conn.cursor() as cursor:
                cursor.executemany(
                    "INSERT INTO imgsim.paths (sha256, path) VALUES (%s, %s) "
                    "ON CONFLICT (sha256, path) DO UPDATE SET seen_at = now()",
                    rows,
                )

    def remember_paths(self, model: str, paths: Mapping[str, str | Collection[str]]) -> None:
        rows = _path_rows(paths)
        with self._lock, self._conn.transaction():
            self._insert_paths(rows)

    def remember_endpoint(self, url: str, name: str, identity: Mapping[str, Any]) -> None:
        model = model_key(identity)
        with self._lock, self._forget_model_on_error(model), self._conn.transaction():
            self._ensure_model(model, identity)
            self._conn.execute(
                "INSERT INTO imgsim.endpoints (url, name, model) VALUES (%s, %s, %s) "
                "ON CONFLICT (url, name) DO UPDATE SET model = EXCLUDED.model, seen_at = now()",
                (url, name, model),
            )

    def endpoint(self, url: str, name: str) -> ModelIdentity | None:
        columns = ", ".join(f"m.{column}" for column in ModelIdentity.__annotations__)
        with self._lock:
            row = self._conn.execute(
                f"SELECT {columns} FROM imgsim.endpoints AS e JOIN imgsim.models AS m USING (model) "
                "WHERE e.url = %s AND e.name = %s",
                (url, name),
            ).fetchone()
        return None if row is None else _identity(row)

    def count(self, model: str) -> int:
        with self._lock:
            located = self._table(model)
            if located is None:
                return 0
            return int(self._one(self._psycopg.sql.SQL("SELECT count(*) FROM {}").format(located[0]))[0])

    def models(self) -> list[StoredModel]:
        with self._lock:
            rows = self._conn.execute(
                "SELECT model, architecture, weights_sha256, embedding_dim, handler_version "
                "FROM imgsim.models ORDER BY model"
            ).fetchall()
            return [_stored_model((*row, self.count(row[0]))) for row in rows]

    def paths(self, model: str, sha256s: Iterable[str] | None = None) -> dict[str, list[str]]:
        sql = self._psycopg.sql
        found: dict[str, list[str]] = {}
        with self._lock:
            located = self._table(model)
            if located is None:
                return found
            where = sql.SQL("") if sha256s is None else sql.SQL("WHERE p.sha256 = ANY(%(shas)s)")
            rows = self._conn.execute(
                sql.SQL(
                    "SELECT p.sha256, p.path FROM imgsim.paths AS p JOIN {} AS i USING (sha256) {} "
                    "ORDER BY p.seen_at DESC, p.path"
                ).format(located[0], where),
                {"shas": list(sha256s)} if sha256s is not None else {},
            )
            for sha, path in rows:
                found.setdefault(sha, []).append(path)
        return found

    def _candidates(
        self, model: str, query: np.ndarray, metric: Metric, want: int, exclude: Collection[str]
    ) -> tuple[list[str], np.ndarray]:
        sql = self._psycopg.sql
        empty: tuple[list[str], np.ndarray] = ([], np.empty((0, len(query)), dtype=np.float32))
        if metric.name not in _PG_OPERATORS:
            raise ValueError(f"metric {metric.name!r} has no pgvector operator; choose from {', '.join(_PG_OPERATORS)}")
        with self._lock:
            located = self._table(model)
            if located is None:
                return empty
            table, dim = located
            if len(query) != dim:
                raise ValueError(f"query has {len(query)} values, but model {model} makes ({dim},) vectors")
            where = sql.SQL("WHERE sha256 <> ALL(%(exclude)s)") if exclude else sql.SQL("")
            if _PG_OPERATORS[metric.name] == "<=>" and dim <= _PG_HNSW_MAX_DIM:  # the expression the index is on
                order = sql.SQL(_PG_INDEXED_ORDER).format(dim=sql.Literal(dim))
            else:
                order = sql.SQL("embedding {} %(query)s").format(sql.SQL(_PG_OPERATORS[metric.name]))
            statement = sql.SQL("SELECT sha256, embedding FROM {} {} ORDER BY {} LIMIT %(want)s").format(table, where, order)
            # ef_search bounds how many rows one HNSW walk can return and sets its recall.
            # A session setting, changed only when it must: a query is then one round trip.
            ef_search = str(min(1000, max(_EF_SEARCH_FLOOR, 2 * want)))
            with self._conn.cursor(binary=True) as cursor:
                if ef_search != self._ef_search:
                    cursor.execute("SELECT set_config('hnsw.ef_search', %s, false)", (ef_search,))
                    self._ef_search = ef_search
                rows = cursor.execute(statement, {"exclude": list(exclude), "query": query, "want": want}).fetchall()
        if not rows:
            return empty
        return [sha for sha, _ in rows], np.stack([vector.to_numpy() for _, vector in rows])

    def close(self) -> None:
        with self._lock:
            self._conn.close()


def _describe_url(url: str) -> str:
    """host:port/database of a URL, without the password, for messages."""
    parts = urlsplit(url)
    return f"{parts.hostname or 'localhost'}:{parts.port or 5432}{parts.path or '/'}"
