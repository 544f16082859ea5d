"""Session fixtures: real archives built by build_mar.sh, a real TorchServe on free ports, a real PostgreSQL.

Everything is built on devtools/ (the harness bench/ shares). Fixtures are made on first
use, so the unit tests that need none of them start none.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from devtools.postgres import running_postgres
from devtools.torchserve import TorchServe, build_archive
from devtools.weights import random_resnet18_weights

LITE = "efficientnet_lite0-embed"  # built from the weights its package ships
RESNET = "resnet18-test-embed"  # built from resnet18_test_weights


@pytest.fixture(scope="session")
def resnet18_test_weights(tmp_path_factory) -> Path:
    """A ResNet18 state dict laid out like the published file, random but reproducible."""
    return random_resnet18_weights(tmp_path_factory.mktemp("weights") / "resnet18-test.pth")


@pytest.fixture(scope="session")
def model_store(tmp_path_factory, resnet18_test_weights) -> Path:
    out = tmp_path_factory.mktemp("model_store")
    build_archive(out, "--arch", "efficientnet_lite0")
    build_archive(
        out, "--arch", "resnet18", "--weights", str(resnet18_test_weights), "--allow-unverified-weights",
        "--name", RESNET,
    )  # fmt: skip
    return out


@pytest.fixture(scope="session")
def server(tmp_path_factory, model_store) -> Iterator[TorchServe]:
    ts = TorchServe.start(tmp_path_factory.mktemp("torchserve"), model_store, (LITE, RESNET))
    yield ts
    ts.stop()


@pytest.fixture(scope="session")
def pg_url() -> Iterator[str]:
    """``postgresql://postgres@127.0.0.1:<port>/postgres`` of a fresh PostgreSQL with pgvector, trust auth.

    It never skips: a server that cannot start fails the tests that need it.
    """
    with running_postgres() as url:
        yield url


def stored_count(store: Path) -> int:
    """Rows in a SQLite store, read-only, 0 while it does not exist yet (another process writes it)."""
    import sqlite3

    try:
        with sqlite3.connect(f"file:{store}?mode=ro", uri=True) as db:
            return db.execute("SELECT count(*) FROM images").fetchone()[0]
    except sqlite3.Error:
        return 0
