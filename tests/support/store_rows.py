"""Rows for the store tests: two model identities and images anyone can recompute from a number."""

from __future__ import annotations

import hashlib

import numpy as np

from client.store import StoredImage

DIM = 16
RESNET = {"architecture": "resnet18", "weights_sha256": "5c" * 32, "embedding_dim": DIM, "handler_version": "1.0.0"}
LITE = {
    "architecture": "efficientnet_lite0",
    "weights_sha256": "57" * 32,
    "embedding_dim": DIM,
    "handler_version": "1.0.0",
}
NEVER_STORED = {"architecture": "no-such-model", "weights_sha256": "00" * 32, "embedding_dim": DIM,
                "handler_version": "1.0.0"}  # fmt: skip
BATCH = 500  # images per batch() call


def sha(n: int | str) -> str:
    return hashlib.sha256(str(n).encode()).hexdigest()


def images(vectors: np.ndarray, start: int = 0) -> list[StoredImage]:
    """One StoredImage per row of ``vectors``, its sha256 that of ``start + row``."""
    return [
        StoredImage(
            sha256=sha(start + i),
            embedding=v.astype(np.float32),
            predictions=[{"index": i % 1000, "label": f"class {i}", "probability": 0.5}],
        )
        for i, v in enumerate(vectors)
    ]


def batch(n: int) -> list[StoredImage]:
    """Batch ``n`` of BATCH random images: rows a reader can recompute to check they are intact."""
    vectors = np.random.default_rng(n).standard_normal((BATCH, DIM)).astype(np.float32)
    return images(vectors, start=n * BATCH)
