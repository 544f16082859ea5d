"""The store of seen images: embeddings keyed by file content and model identity.

Back ends behind one interface (``base.EmbeddingStore``):

- ``sqlite.SQLiteStore`` (default): one file, no server; exact search over a matrix in RAM.
- ``postgres.PostgresStore`` (``postgresql://`` locations): PostgreSQL + pgvector, for stores
  that outgrow a machine; search walks an HNSW index.

Schema changes are numbered steps in each back end, run by ``migrations.upgrade``.
Adding a back end: a subclass of ``EmbeddingStore`` and a branch in ``open_store``.
"""

from __future__ import annotations

import os
from pathlib import Path

from client.store.base import (
    EmbeddingStore,
    ModelIdentity,
    PathsBySha,
    StoredFileState,
    StoredImage,
    StoredModel,
    StoreError,
    model_key,
)  # fmt: skip
from client.store.migrations import SCHEMA_VERSION

__all__ = [
    "SCHEMA_VERSION", "EmbeddingStore", "ModelIdentity", "PathsBySha", "StoreError", "StoredFileState", "StoredImage",
    "StoredModel", "model_key", "open_store",
]  # fmt: skip


def open_store(location: str | os.PathLike[str]) -> EmbeddingStore:
    """``postgresql://user@host:port/db`` opens PostgreSQL; anything else is a SQLite file path."""
    text = os.fspath(location)
    if text.startswith(("postgresql://", "postgres://")):
        from client.store.postgres import PostgresStore  # psycopg is imported only for PostgreSQL users

        return PostgresStore(text)
    from client.store.sqlite import SQLiteStore

    return SQLiteStore(Path(text).expanduser())
