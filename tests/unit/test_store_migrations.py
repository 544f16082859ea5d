"""Store schema migrations: numbered steps that upgrade an older store in place, in one transaction."""

from __future__ import annotations

import logging
import sqlite3
from pathlib import Path

import numpy as np
import pytest

from client.store import SCHEMA_VERSION, StoreError, open_store, postgres, sqlite
from client.store.migrations import Step

IDENTITY = {"architecture": "resnet18", "weights_sha256": "ab" * 32, "embedding_dim": 4, "handler_version": "1.0.0"}
SHA = "cd" * 32


def version_one_store(path: Path) -> None:
    """A store as the client of schema 1 left it: its tables, one image, version 1."""
    with sqlite3.connect(path) as conn:
        sqlite.STEPS[0].apply(conn)
        conn.execute("INSERT INTO meta (key, value) VALUES ('schema_version', '1')")
        conn.execute(
            "INSERT INTO models (model, architecture, weights_sha256, embedding_dim, handler_version) VALUES (?, ?, ?, ?, ?)",
            ("resnet18/abababababab/1.0.0", "resnet18", "ab" * 32, 4, "1.0.0"),
        )
        conn.execute(
            "INSERT INTO images (model, sha256, embedding, predictions) VALUES (?, ?, ?, ?)",
            ("resnet18/abababababab/1.0.0", SHA, np.arange(4, dtype="<f4").tobytes(), "[]"),
        )
        conn.execute("INSERT INTO paths (sha256, path) VALUES (?, ?)", (SHA, "holiday/cat.jpg"))
    conn.close()


def store_at_version(path: Path, version: int) -> None:
    """A store as the client of schema ``version`` left it: version one's rows, upgraded by the steps up to it."""
    version_one_store(path)
    with sqlite3.connect(path) as conn:
        for step in sqlite.STEPS[1:version]:
            if step.apply is not None:
                step.apply(conn)
        conn.execute("UPDATE meta SET value = ? WHERE key = 'schema_version'", (str(version),))
    conn.close()


def stored_version(path: Path) -> str:
    with sqlite3.connect(path) as conn:
        (value,) = conn.execute("SELECT value FROM meta WHERE key = 'schema_version'").fetchone()
    conn.close()
    return value


def test_every_back_end_numbers_its_steps_up_to_the_schema_version() -> None:
    for steps in (sqlite.STEPS, postgres.STEPS):
        assert [step.version for step in steps] == list(range(1, SCHEMA_VERSION + 1))
        assert all(step.reason and "\n" not in step.reason for step in steps)


def test_an_older_store_is_upgraded_in_place_and_keeps_its_rows(tmp_path: Path, caplog) -> None:
    path = tmp_path / "old.sqlite"
    version_one_store(path)
    with caplog.at_level(logging.INFO, logger="client.store"), open_store(path) as store:
        got = store.get_many(IDENTITY, [SHA])
        assert got[SHA]["embedding"].tolist() == [0.0, 1.0, 2.0, 3.0]
        assert store.paths(IDENTITY) == {SHA: ["holiday/cat.jpg"]}
    assert stored_version(path) == str(SCHEMA_VERSION)
    assert f"upgrading the store schema to version {SCHEMA_VERSION}" in caplog.text
    assert str(path) in caplog.text
    caplog.clear()
    with caplog.at_level(logging.INFO, logger="client.store"), open_store(path):
        pass
    assert "upgrading" not in caplog.text  # once upgraded, it stays so


def test_a_new_store_is_made_at_the_current_version_without_upgrade_notices(tmp_path: Path, caplog) -> None:
    with caplog.at_level(logging.INFO, logger="client.store"), open_store(tmp_path / "new.sqlite"):
        pass
    assert stored_version(tmp_path / "new.sqlite") == str(SCHEMA_VERSION)
    assert caplog.text == ""


def test_a_failing_step_leaves_the_store_exactly_as_it_was(tmp_path: Path, monkeypatch) -> None:
    path = tmp_path / "old.sqlite"
    version_one_store(path)

    def half_done(conn: sqlite3.Connection) -> None:
        conn.execute("CREATE TABLE half_done (x)")
        raise sqlite3.OperationalError("disk I/O error (simulated)")

    monkeypatch.setattr(sqlite, "STEPS", [*sqlite.STEPS[:-1], Step(SCHEMA_VERSION, "a step that fails midway", half_done)])
    with pytest.raises(StoreError, match="disk I/O error"):
        open_store(path)
    assert stored_version(path) == "1"
    with sqlite3.connect(path) as conn:
        tables = {row[0] for row in conn.execute("SELECT name FROM sqlite_master WHERE type = 'table'")}
        assert conn.execute("SELECT count(*) FROM images").fetchone()[0] == 1
    conn.close()
    assert "half_done" not in tables


def test_a_schema_3_store_gains_file_states_and_keeps_its_rows(tmp_path: Path) -> None:
    path = tmp_path / "v3.sqlite"
    store_at_version(path, 3)
    with sqlite3.connect(path) as conn:
        assert "file_state" not in {row[0] for row in conn.execute("SELECT name FROM sqlite_master")}
    conn.close()
    state = {"path": "/photos/cat.jpg", "device": 2**64 - 1, "inode": 2**63, "size": 5, "mtime_ns": 10**18,
             "sha256": SHA}  # fmt: skip
    with open_store(path) as store:
        assert store.paths(IDENTITY) == {SHA: ["holiday/cat.jpg"]}
        assert store.file_states(["/photos/cat.jpg"]) == {}
        store.remember_file_states([state])
    assert stored_version(path) == str(SCHEMA_VERSION) == "6"
    with open_store(path) as store:  # unsigned 64-bit device and inode numbers come back as they went in
        assert store.file_states(["/photos/cat.jpg", "/photos/other.jpg"]) == {"/photos/cat.jpg": state}


def test_a_schema_4_store_gains_the_change_log_that_keeps_its_snapshots_current(tmp_path: Path) -> None:
    path = tmp_path / "v4.sqlite"
    store_at_version(path, 4)
    with open_store(path) as store:
        assert store.paths(IDENTITY) == {SHA: ["holiday/cat.jpg"]}
    assert stored_version(path) == "6"
    with sqlite3.connect(path) as conn:
        triggers = {row[0] for row in conn.execute("SELECT name FROM sqlite_master WHERE type = 'trigger'")}
        assert triggers == {"images_added", "images_changed", "images_removed"}
        conn.execute("INSERT INTO vector_snapshots (model) SELECT model FROM models")
        conn.execute("UPDATE images SET embedding = embedding")
        conn.execute("DELETE FROM images")
        assert conn.execute("SELECT sha256 FROM vector_changes ORDER BY seq").fetchall() == [(SHA,), (SHA,)]
    conn.close()
