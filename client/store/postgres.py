"""The PostgreSQL + pgvector back end (``postgresql://`` locations), for stores that outgrow a machine.

Search walks an HNSW index where one exists; the candidates are rescored exactly by
``EmbeddingStore.search``, so the numbers equal the SQLite back end's.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Collection, Iterable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from typing import Any
from urllib.parse import urlsplit

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
from client.store.migrations import Step, parse_version, upgrade

logger = logging.getLogger(__name__)

# The smallest HNSW candidate list a pgvector walk keeps (hnsw.ef_search; pgvector's default is 40):
# below 100, exact top-1 on random data starts to slip (the store tests check it).
_EF_SEARCH_FLOOR = 100

# Everything lives in one schema so that a shared database's own tables never collide with ours.
_SCHEMA_V1 = """
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
)
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
# put_many loads a batch of at least _BULK_ROWS rows that is at least _BULK_SHARE times the rows
# already stored with the HNSW index dropped and built again once (bulk_load does so always).
# A rebuild costs the whole table: on 2 cores, 1280-d, about 2-3 ms a row built against 4-5 ms
# a row kept current, so it pays once the batch is ~1.3x the table (docs/SCALE.md,
# bench/library_scale.py); 2x leaves a margin. The count is exact: a stale planner estimate
# could rebuild a large table for a small batch.
_BULK_ROWS = 10_000
_BULK_SHARE = 2.0
# An HNSW graph row: the halfvec (2 bytes a dimension) plus neighbour lists and tuple headers.
_HNSW_BYTES_PER_ROW = 400
_BULK_MEMORY_CAP = 4 * 2**30  # the most maintenance_work_mem a bulk load asks the server for




def _create_v1(conn: Any) -> None:
    conn.execute(_SCHEMA_V1)


def _halfvec_indexes(conn: Any) -> None:
    """Stores made before the halfvec index had one over float32 vectors, which the queries
    no longer use: build the halfvec one in its place (about a minute per 100k vectors)."""
    from psycopg import sql

    rows = conn.execute(
        "SELECT m.id, m.embedding_dim, i.indexname, i.indexdef FROM imgsim.models m "
        "LEFT JOIN pg_indexes i ON i.schemaname = 'imgsim' AND i.tablename = 'images_' || m.id "
        "AND i.indexdef LIKE '%%USING hnsw%%' WHERE m.embedding_dim <= %s",
        (_PG_HNSW_MAX_DIM,),
    ).fetchall()
    current = {table_id for table_id, _, _, definition in rows if definition and "halfvec" in definition}
    for table_id, dim, index, _ in rows:
        if table_id in current:
            continue
        logger.info("building the halfvec HNSW index of imgsim.images_%s (about a minute per 100k images)", table_id)
        if index:
            conn.execute(sql.SQL("DROP INDEX {}").format(sql.Identifier("imgsim", index)))
        conn.execute(sql.SQL(_PG_INDEX).format(table=sql.Identifier("imgsim", f"images_{table_id}"), dim=sql.Literal(dim)))
        current.add(table_id)


_SCHEMA_V3 = """
CREATE TABLE IF NOT EXISTS imgsim.not_duplicates (
    sha_a     text NOT NULL,               -- the smaller sha256 of the pair
    sha_b     text NOT NULL,
    marked_at timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (sha_a, sha_b),
    CHECK (sha_a < sha_b)
);
-- byte order ("C"), so that a folder is one range of paths whatever the database's collation
CREATE INDEX IF NOT EXISTS paths_by_path ON imgsim.paths (path COLLATE "C")
"""


def _not_duplicates(conn: Any) -> None:
    conn.execute(_SCHEMA_V3)


_SCHEMA_V4 = """
CREATE TABLE IF NOT EXISTS imgsim.file_state (
    path       text PRIMARY KEY,           -- absolute and resolved
    device     bigint NOT NULL,            -- st_dev, st_ino: unsigned 64-bit stored as signed
    inode      bigint NOT NULL,
    size       bigint NOT NULL,
    mtime_ns   bigint NOT NULL,
    sha256     text NOT NULL,
    checked_at timestamptz NOT NULL DEFAULT now()
)
"""


def _file_state(conn: Any) -> None:
    conn.execute(_SCHEMA_V4)


_SCHEMA_V6 = """
CREATE TABLE IF NOT EXISTS imgsim.failures (
    model     text NOT NULL,               -- model_key(identity): refused by the server serving it
    sha256    text NOT NULL,
    code      text NOT NULL,               -- the server's error, as it said it
    message   text NOT NULL,
    failed_at timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (model, sha256)
)
"""


def _failures(conn: Any) -> None:
    conn.execute(_SCHEMA_V6)


STEPS: list[Step[Any]] = [
    Step(1, "the first schema: models, one images_<id> table per model, paths by content, endpoints", _create_v1),
    Step(2, "the cosine HNSW index is over halfvec casts: faster walks, and up to 4,000-d vectors get one",
         _halfvec_indexes),
    Step(3, "pairs a user said are not duplicates; paths looked up by folder (index.py)", _not_duplicates),
    Step(4, "each file's stat beside its sha256: an unchanged file is not read again", _file_state),
    Step(5, "SQLite logs changed rows for its vector snapshots; nothing changes in PostgreSQL", None),
    Step(6, "contents the server refused, so a rerun does not send a damaged file again", _failures),
]  # fmt: skip


def _record_version(conn: Any, version: int) -> None:
    conn.execute(
        "INSERT INTO imgsim.meta (key, value) VALUES ('schema_version', %s) "
        "ON CONFLICT (key) DO UPDATE SET value = EXCLUDED.value",
        (str(version),),
    )


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
            upgrade(self._conn, STEPS, self._version(), f"store {self._where}", _record_version)
        register_vector(self._conn)
        version = self._one("SELECT extversion FROM pg_extension WHERE extname = 'vector'")[0]
        if tuple(int(p) for p in version.split(".")[:2]) >= (0, 8):
            # an iterative scan keeps walking the index when the exclude filter drops rows,
            # instead of returning fewer than asked
            self._conn.execute("SELECT set_config('hnsw.iterative_scan', 'strict_order', false)")
        self._ef_search = ""

    def _version(self) -> int | None:
        """The stored schema version; None where the database has no store yet."""
        if self._one("SELECT to_regclass('imgsim.meta')")[0] is None:
            return None
        row = self._conn.execute("SELECT value FROM imgsim.meta WHERE key = 'schema_version'").fetchone()
        return parse_version(row[0] if row else None, f"store {self._where}")

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

    def get_many(self, identity: Mapping[str, Any], sha256s: Iterable[str]) -> dict[str, StoredImage]:
        model = model_key(identity)
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
        self, identity: Mapping[str, Any], items: Sequence[StoredImage], paths: PathsBySha | None = None
    ) -> None:
        """A large batch (``_BULK_ROWS`` or more, at least ``_BULK_SHARE`` times the rows stored) is loaded with
        the model's HNSW index dropped and built again once at the end, in the same transaction (``bulk_load``)."""
        unique, matrix = check_put(identity, items)
        model = model_key(identity)
        located = path_rows(paths or {})
        with self._lock, self._forget_model_on_error(model), self._conn.transaction():
            table = self._ensure_model(model, identity)
            if len(unique) >= _BULK_ROWS and len(unique) >= _BULK_SHARE * self._stored_rows(model):
                with self._index_deferred(model):
                    self._upsert(table, identity["embedding_dim"], unique, matrix)
            else:
                self._upsert(table, identity["embedding_dim"], unique, matrix)
            self._insert_paths(located)

    def bulk_load(
        self, identity: Mapping[str, Any], chunks: Iterable[Sequence[StoredImage]], paths: PathsBySha | None = None
    ) -> int:
        """Inserts or replaces every chunk's items (read one chunk at a time) in ONE transaction, with the
        model's HNSW index dropped for the load and built once at the end; returns the rows written.

        A failure in any chunk (a bad vector, a lost connection) leaves the store as it was. Meanwhile
        other connections that read this model's table wait for the commit (DROP INDEX locks it).
        """
        model = model_key(identity)
        located = path_rows(paths or {})
        written = 0
        with self._lock, self._forget_model_on_error(model), self._conn.transaction():
            table = self._ensure_model(model, identity)
            with self._index_deferred(model):
                for chunk in chunks:
                    unique, matrix = check_put(identity, chunk)
                    self._upsert(table, identity["embedding_dim"], unique, matrix)
                    written += len(unique)
            self._insert_paths(located)
        return written

    def _upsert(self, table: Any, dim: int, unique: list[StoredImage], matrix: np.ndarray) -> None:
        """Inside the caller's transaction: the rows into ``table``, replacing those already there."""
        sql, jsonb = self._psycopg.sql, self._psycopg.types.json.Jsonb
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
        self._conn.execute("DROP TABLE incoming")  # the next chunk of a bulk load makes its own

    def _stored_rows(self, model: str) -> int:
        table_id, _ = self._tables[model]
        return int(self._one(self._psycopg.sql.SQL("SELECT count(*) FROM {}").format(
            self._psycopg.sql.Identifier("imgsim", f"images_{table_id}")))[0])  # fmt: skip

    @contextmanager
    def _index_deferred(self, model: str) -> Iterator[None]:
        """Inside the caller's transaction: the table's HNSW indexes dropped, then built again from every row."""
        sql = self._psycopg.sql
        table_id, dim = self._tables[model]
        indexes = self._conn.execute(
            "SELECT indexname, indexdef FROM pg_indexes WHERE schemaname = 'imgsim' AND tablename = %s "
            "AND indexdef LIKE '%%USING hnsw%%'",
            (f"images_{table_id}",),
        ).fetchall()
        for name, _ in indexes:
            self._conn.execute(sql.SQL("DROP INDEX {}").format(sql.Identifier("imgsim", name)))
        yield
        if not indexes:
            return
        rows = self._one(sql.SQL("SELECT count(*) FROM {}").format(sql.Identifier("imgsim", f"images_{table_id}")))[0]
        # pgvector builds fast only while the whole graph fits in maintenance_work_mem; for this
        # transaction only, and never lower than the server's own setting.
        wanted_kb = min(_BULK_MEMORY_CAP, int(rows * (2 * dim + _HNSW_BYTES_PER_ROW) * 1.25)) // 1024
        current_kb = int(self._one("SELECT setting FROM pg_settings WHERE name = 'maintenance_work_mem'")[0])
        if wanted_kb > current_kb:
            self._conn.execute("SELECT set_config('maintenance_work_mem', %s, true)", (f"{wanted_kb}kB",))
        # The vectors live in TOAST, so the planner sizes the heap as tiny and gives the build no
        # parallel workers: name the server's own maintenance worker count on the table, for this
        # transaction only (2.1x faster on 2 cores at 30,000 rows: bench/library_scale.py, docs/SCALE.md).
        table = sql.Identifier("imgsim", f"images_{table_id}")
        workers = int(self._one("SELECT setting FROM pg_settings WHERE name = 'max_parallel_maintenance_workers'")[0])
        if workers > 0:
            self._conn.execute(sql.SQL("ALTER TABLE {} SET (parallel_workers = {})").format(table, sql.Literal(workers)))
        logger.info("building the HNSW index of imgsim.images_%s over %d rows (%d parallel workers asked)",
                    table_id, rows, workers)  # fmt: skip
        for _, definition in indexes:
            self._conn.execute(definition)
        if workers > 0:
            self._conn.execute(sql.SQL("ALTER TABLE {} RESET (parallel_workers)").format(table))

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
        columns = list(IDENTITY_FIELDS)
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
        check_identity_matches(model, dict(zip(columns, row, strict=True)), identity)
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

    def remember_paths(self, paths: PathsBySha) -> None:
        rows = path_rows(paths)
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
        columns = ", ".join(f"m.{column}" for column in IDENTITY_FIELDS)
        with self._lock:
            row = self._conn.execute(
                f"SELECT {columns} FROM imgsim.endpoints AS e JOIN imgsim.models AS m USING (model) "
                "WHERE e.url = %s AND e.name = %s",
                (url, name),
            ).fetchone()
        return None if row is None else identity_of(row)

    def count(self, identity: Mapping[str, Any]) -> int:
        with self._lock:
            return self._count(model_key(identity))

    def models(self) -> list[StoredModel]:
        with self._lock:
            rows = self._conn.execute(
                f"SELECT model, {', '.join(IDENTITY_FIELDS)} FROM imgsim.models ORDER BY model"
            ).fetchall()
            return [stored_model_of((*row, self._count(row[0]))) for row in rows]

    def _count(self, model: str) -> int:
        located = self._table(model)
        if located is None:
            return 0
        return int(self._one(self._psycopg.sql.SQL("SELECT count(*) FROM {}").format(located[0]))[0])

    def paths(self, identity: Mapping[str, Any], sha256s: Iterable[str] | None = None) -> dict[str, list[str]]:
        sql = self._psycopg.sql
        found: dict[str, list[str]] = {}
        with self._lock:
            located = self._table(model_key(identity))
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

    def known_paths(self, under: str) -> dict[str, str]:
        low, high = folder_range(under)
        with self._lock:
            rows = self._conn.execute(
                'SELECT path, sha256 FROM imgsim.paths WHERE path COLLATE "C" >= %s AND path COLLATE "C" < %s '
                "ORDER BY seen_at",
                (low, high),
            ).fetchall()
        return dict(rows)  # a path seen with several contents: the latest one

    def forget_paths(self, paths: Iterable[str]) -> int:
        wanted = list(dict.fromkeys(paths))
        sql = self._psycopg.sql
        with self._lock, self._conn.transaction():
            touched = {
                row[0]
                for row in self._conn.execute(
                    "DELETE FROM imgsim.paths WHERE path = ANY(%s) RETURNING sha256", (wanted,)
                ).fetchall()
            }
            self._conn.execute("DELETE FROM imgsim.file_state WHERE path = ANY(%s)", (wanted,))
            # contents still seen elsewhere keep their vectors
            gone = sorted(
                touched
                - {row[0] for row in self._conn.execute(
                    "SELECT DISTINCT sha256 FROM imgsim.paths WHERE sha256 = ANY(%s)", (sorted(touched),)
                ).fetchall()}
            )  # fmt: skip
            if gone:
                for (table_id,) in self._conn.execute("SELECT id FROM imgsim.models").fetchall():
                    table = sql.Identifier("imgsim", f"images_{table_id}")
                    self._conn.execute(sql.SQL("DELETE FROM {} WHERE sha256 = ANY(%s)").format(table), (gone,))
        return len(gone)

    def file_states(self, paths: Iterable[str]) -> dict[str, StoredFileState]:
        wanted = list(dict.fromkeys(paths))
        found: dict[str, StoredFileState] = {}
        with self._lock:
            for i in range(0, len(wanted), 10000):
                rows = self._conn.execute(
                    "SELECT path, device, inode, size, mtime_ns, sha256 FROM imgsim.file_state WHERE path = ANY(%s)",
                    (wanted[i : i + 10000],),
                )
                found.update((row[0], file_state_of(row)) for row in rows)
        return found

    def remember_file_states(self, states: Sequence[StoredFileState]) -> None:
        rows = file_state_rows(states)
        if not rows:
            return
        with self._lock, self._conn.transaction(), self._conn.cursor() as cursor:
            cursor.executemany(
                "INSERT INTO imgsim.file_state (path, device, inode, size, mtime_ns, sha256) "
                "VALUES (%s, %s, %s, %s, %s, %s) ON CONFLICT (path) DO UPDATE SET device = EXCLUDED.device, "
                "inode = EXCLUDED.inode, size = EXCLUDED.size, mtime_ns = EXCLUDED.mtime_ns, "
                "sha256 = EXCLUDED.sha256, checked_at = now()",
                rows,
            )

    def remember_failures(self, identity: Mapping[str, Any], failures: Mapping[str, Mapping[str, str]]) -> None:
        rows = failure_rows(model_key(identity), failures)
        if not rows:
            return
        with self._lock, self._conn.transaction(), self._conn.cursor() as cursor:
            cursor.executemany(
                "INSERT INTO imgsim.failures (model, sha256, code, message) VALUES (%s, %s, %s, %s) "
                "ON CONFLICT (model, sha256) DO UPDATE SET code = EXCLUDED.code, message = EXCLUDED.message, "
                "failed_at = now()",
                rows,
            )

    def failures(self, identity: Mapping[str, Any], sha256s: Iterable[str]) -> dict[str, dict[str, str]]:
        model, wanted = model_key(identity), list(dict.fromkeys(sha256s))
        found: dict[str, dict[str, str]] = {}
        with self._lock:
            for i in range(0, len(wanted), 10000):
                rows = self._conn.execute(
                    "SELECT sha256, code, message FROM imgsim.failures WHERE model = %s AND sha256 = ANY(%s)",
                    (model, wanted[i : i + 10000]),
                )
                found.update((sha, {"code": code, "message": message}) for sha, code, message in rows)
        return found

    def mark_not_duplicates(self, pairs: Iterable[tuple[str, str]]) -> None:
        rows = pair_rows(pairs)
        with self._lock, self._conn.transaction(), self._conn.cursor() as cursor:
            cursor.executemany(
                "INSERT INTO imgsim.not_duplicates (sha_a, sha_b) VALUES (%s, %s) ON CONFLICT DO NOTHING", rows
            )

    def not_duplicates(self) -> set[tuple[str, str]]:
        with self._lock:
            return {(a, b) for a, b in self._conn.execute("SELECT sha_a, sha_b FROM imgsim.not_duplicates")}

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
