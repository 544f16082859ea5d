"""pgvector top-k latency and exactness per hnsw.ef_search and index type, on one table.

    .venv/bin/python bench/pgvector_query.py          # ~5 minutes on 2 cores

Loads N random unit vectors (default 100k x 512, as bench/throughput.py's (e)) into a
fresh embedded PostgreSQL with COPY, builds two HNSW cosine indexes on the same table
(on the float32 `vector` column, and on the `halfvec` expression that
client/store/postgres.py indexes), then times the store's query shape (the k + 16
nearest with their vectors, rescored exactly in numpy) interleaved across settings, one
SELECT per query, and compares the top-10 with exact search: recall@10 and how often
the top-1 is the exact top-1.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time

import numpy as np
import psycopg
from pgvector.psycopg import register_vector

from devtools.postgres import running_postgres


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[1])
    parser.add_argument("--vectors", type=int, default=100_000)
    parser.add_argument("--dim", type=int, default=512)
    parser.add_argument("--queries", type=int, default=100)
    parser.add_argument("--ef", default="40,64,100")
    args = parser.parse_args()
    rng = np.random.default_rng(0)
    stored = rng.normal(size=(args.vectors, args.dim)).astype(np.float32)
    stored /= np.linalg.norm(stored, axis=1, keepdims=True)
    queries = rng.normal(size=(args.queries, args.dim)).astype(np.float32)
    exact = [np.argsort(-(stored @ q))[:10] for q in queries]
    want = 10 + 16  # client/store/base.py: k + _EXTRA_CANDIDATES
    half = f"halfvec({args.dim})"
    shapes = {
        "vector": "SELECT id, embedding FROM t ORDER BY embedding <=> %(q)s LIMIT %(n)s",
        "halfvec": f"SELECT id, embedding FROM t ORDER BY embedding::{half} <=> %(q)s::{half} LIMIT %(n)s",
    }
    with running_postgres("-c shared_buffers=2GB -c maintenance_work_mem=2GB") as url:
        conn = psycopg.connect(url, autocommit=True)
        conn.execute("CREATE EXTENSION vector")
        register_vector(conn)
        conn.execute(f"CREATE TABLE t (id int PRIMARY KEY, embedding vector({args.dim}) NOT NULL)")
        started = time.perf_counter()
        with conn.cursor().copy("COPY t (id, embedding) FROM STDIN WITH (FORMAT BINARY)") as copy:
            copy.set_types(["int4", "vector"])
            for i, vector in enumerate(stored):
                copy.write_row((i, vector))
        conn.execute("CREATE INDEX ON t USING hnsw (embedding vector_cosine_ops)")
        conn.execute(f"CREATE INDEX ON t USING hnsw ((embedding::{half}) halfvec_cosine_ops)")
        print(f"loaded and indexed {args.vectors:,} vectors in {time.perf_counter() - started:.0f} s", file=sys.stderr)
        version = conn.execute("SELECT extversion FROM pg_extension WHERE extname = 'vector'").fetchone()[0]
        results = {}
        for ef in [int(e) for e in args.ef.split(",")]:
            conn.execute(f"SET hnsw.ef_search = {ef}")
            for name, sql in shapes.items():
                conn.execute(sql, {"q": queries[0], "n": want}, prepare=True).fetchall()  # warm, prepared
            times = {name: [] for name in shapes}
            recall = {name: [] for name in shapes}
            top1 = {name: [] for name in shapes}
            for q, truth in zip(queries, exact):
                for name, sql in shapes.items():  # interleaved, so drift hits both alike
                    start = time.perf_counter()
                    rows = conn.execute(sql, {"q": q, "n": want}, binary=True, prepare=True).fetchall()
                    ids = np.array([r[0] for r in rows])
                    vectors = np.stack([r[1].to_numpy() for r in rows]).astype(np.float64)
                    top = ids[np.argsort(-(vectors @ q.astype(np.float64)))[:10]]
                    times[name].append((time.perf_counter() - start) * 1000)
                    recall[name].append(len(set(top) & set(truth)) / 10)
                    top1[name].append(top[0] == truth[0])
            for name in shapes:
                results[(ef, name)] = (statistics.median(times[name]), np.percentile(times[name], 90),
                                       np.mean(recall[name]), np.mean(top1[name]))  # fmt: skip
    print(f"{args.vectors:,} random unit vectors of {args.dim} dimensions, pgvector {version}, "
          f"{args.queries} queries, top-10 from the {want} nearest\n")  # fmt: skip
    print("| ef_search | index | median ms | p90 ms | recall@10 | top-1 exact |\n| --- | --- | --- | --- | --- | --- |")
    for (ef, name), (median, p90, rec, first) in results.items():
        print(f"| {ef} | {name} | {median:.2f} | {p90:.2f} | {rec:.3f} | {first:.0%} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
