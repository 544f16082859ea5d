"""Fresh databases on the tests' PostgreSQL server (tests/conftest.py's ``pg_url``), one per test that needs it."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from urllib.parse import urlsplit

import psycopg


def create_database(server_url: str, prefix: str) -> str:
    """The URL of a new, empty database named ``<prefix>_<random>`` on the server of ``server_url``."""
    name = f"{prefix}_{uuid.uuid4().hex[:12]}"
    with psycopg.connect(server_url, autocommit=True) as admin:
        admin.execute(f'CREATE DATABASE "{name}"')
    return urlsplit(server_url)._replace(path=f"/{name}").geturl()


@contextmanager
def fresh_database(server_url: str, prefix: str) -> Iterator[str]:
    """``create_database``, dropped again afterwards (its open connections with it)."""
    url = create_database(server_url, prefix)
    try:
        yield url
    finally:
        with psycopg.connect(server_url, autocommit=True) as admin:
            admin.execute(f'DROP DATABASE "{urlsplit(url).path.lstrip("/")}" WITH (FORCE)')
