"""The store of seen images where no database server is needed: SQLite, the model key, refusals.

The behaviour both back ends share runs against SQLite and a real PostgreSQL in
tests/integration/test_store.py.
"""

from __future__ import annotations

import os
import signal
import sqlite3
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import numpy as np
import pytest

from client.store import StoreError, model_key, open_store
from devtools import REPO
from tests.support.store_rows import BATCH, DIM, RESNET, batch, images, sha


def test_model_key_is_readable_and_tells_weights_apart() -> None:
    assert model_key(RESNET) == "resnet18/5c5c5c5c5c5c/1.0.0"
    assert model_key(RESNET) != model_key({**RESNET, "weights_sha256": "00" * 32})
    with pytest.raises(ValueError, match="weights_sha256"):
        model_key({"architecture": "resnet18", "embedding_dim": 512, "handler_version": "1"})


def test_file_that_is_not_a_store_is_refused(tmp_path: Path) -> None:
    photo = tmp_path / "cat.jpg"
    photo.write_bytes(b"\xff\xd8\xff\xe0" + bytes(4096))
    with pytest.raises(StoreError, match=r"cat\.jpg"):
        open_store(photo)
    other = tmp_path / "other.sqlite"
    with sqlite3.connect(other) as conn:
        conn.execute("CREATE TABLE notes (text TEXT)")
    conn.close()
    with pytest.raises(StoreError, match="something else"):
        open_store(other)
    with pytest.raises(StoreError, match="is a folder"):
        open_store(tmp_path)


def test_unreachable_postgres_says_so_without_the_password() -> None:
    with pytest.raises(StoreError, match=r"cannot reach PostgreSQL at 127\.0\.0\.1:1/nowhere") as caught:
        open_store("postgresql://someone:secret@127.0.0.1:1/nowhere")
    assert "secret" not in str(caught.value)


def test_sqlite_search_sees_rows_another_connection_wrote(tmp_path: Path) -> None:
    path = tmp_path / "shared.sqlite"
    target = np.arange(DIM, dtype=np.float32)
    with open_store(path) as reader, open_store(path) as writer:
        writer.put_many(RESNET, images(np.ones((3, DIM))))
        assert len(reader.search(RESNET, target, k=10)) == 3  # loads its matrix
        writer.put_many(RESNET, images(target[None, :], start=99))
        assert reader.search(RESNET, target, k=1)[0][0] == sha(99)


_KILLED_WRITER = textwrap.dedent(
    """
    import sys
    from client.store import open_store
    from tests.support.store_rows import RESNET, batch

    with open_store(sys.argv[1]) as store:
        for n in range(int(sys.argv[2]), 10**9):
            store.put_many(RESNET, batch(n))
            print(n, flush=True)  # only after the commit returned
    """
)


def test_sigkill_mid_write_leaves_an_intact_store_with_every_committed_batch(tmp_path: Path) -> None:
    path = tmp_path / "killed.sqlite"
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")])}
    committed: list[int] = []
    in_flight: list[int] = []
    # Each round writes new batches, so a later round cannot heal a batch torn by an earlier
    # kill; random delays land kills at every stage of a batch, mid-commit included.
    for round_, delay in enumerate(np.random.default_rng().uniform(0, 0.03, size=8)):
        writer = subprocess.Popen(
            [sys.executable, "-c", _KILLED_WRITER, str(path), str(1000 * round_)],
            stdout=subprocess.PIPE,
            text=True,
            env=env,
            cwd=REPO,  # python -c imports from the working folder first
        )
        assert writer.stdout is not None
        printed = [int(writer.stdout.readline()) for _ in range(2)]
        time.sleep(delay)
        os.kill(writer.pid, signal.SIGKILL)
        rest, _ = writer.communicate(timeout=30)
        assert writer.returncode == -signal.SIGKILL
        printed += [int(line) for line in rest.split()]
        committed += printed
        in_flight.append(printed[-1] + 1)

    with sqlite3.connect(path) as conn:
        assert conn.execute("PRAGMA integrity_check").fetchall() == [("ok",)]
    conn.close()
    with open_store(path) as store:
        for n in committed:
            expected = batch(n)
            got = store.get_many(RESNET, [item["sha256"] for item in expected])
            assert len(got) == BATCH, f"committed batch {n} lost rows"
            for item in expected:
                assert got[item["sha256"]]["embedding"].tobytes() == item["embedding"].tobytes()
        for n in in_flight:  # cut by the kill: all there or not there at all
            assert len(store.get_many(RESNET, [item["sha256"] for item in batch(n)])) in (0, BATCH)
