"""Shared fixtures: real archives built by build_mar.sh and a real TorchServe on free ports."""

from __future__ import annotations

import io
import sys
from pathlib import Path

import pytest
import torch

REPO = Path(__file__).resolve().parent.parent
sys.path[:0] = [str(REPO), str(REPO / "handler")]

from tests.pg_fixture import pg_url  # noqa: E402,F401  (a real PostgreSQL with pgvector)
from tests.server import TorchServe, build_archive  # noqa: E402

IMAGES = REPO / "images"
LITE = "efficientnet_lite0-embed"
RESNET = "resnet18-test-embed"


@pytest.fixture(scope="session")
def resnet18_test_weights(tmp_path_factory) -> Path:
    """A ResNet18 state dict laid out like the published file, random but reproducible."""
    import torchvision

    torch.manual_seed(0)
    path = tmp_path_factory.mktemp("weights") / "resnet18-test.pth"
    torch.save(torchvision.models.resnet18(weights=None).state_dict(), path)
    return path


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
def server(tmp_path_factory, model_store):
    ts = TorchServe.start(tmp_path_factory.mktemp("torchserve"), model_store, (LITE, RESNET))
    yield ts
    ts.stop()


def stored_count(store: Path) -> int:
    """Rows in a SQLite store, read-only, 0 while it does not exist yet (another process writes it)."""
    import sqlite3

    try:
        with sqlite3.connect(f"file:{store}?mode=ro", uri=True) as db:
            return db.execute("SELECT count(*) FROM images").fetchone()[0]
    except sqlite3.Error:
        return 0


def png_bytes(image) -> bytes:
    buf = io.BytesIO()
    image.save(buf, "PNG")
    return buf.getvalue()
