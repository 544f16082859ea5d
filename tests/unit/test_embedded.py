"""What a run keeps per image (client.embedding.Embedded): its vector in one matrix and a few dozen bytes more."""

from __future__ import annotations

import tracemalloc

import numpy as np

from client.embedding import Embedded
from client.store import StoredImage

DIM = 1280


def stored(n: int, start: int = 0, seed: int = 0) -> list[StoredImage]:
    rng = np.random.default_rng(seed)
    return [
        StoredImage(
            sha256=f"{start + i:064x}",
            embedding=rng.standard_normal(DIM).astype(np.float32),
            predictions=[{"index": (start + i + k) % 1000, "label": f"class {(start + i + k) % 1000}",
                          "probability": float(rng.random())} for k in range(5)],  # fmt: skip
        )
        for i in range(n)
    ]


def test_rows_come_back_as_they_went_in_and_a_later_row_replaces_an_earlier_one() -> None:
    first, second = stored(300), stored(10, start=295, seed=1)
    done = Embedded(None, _expected=305)
    done.add(first[:150])
    done.add(first[150:])
    done.add(second)  # 5 replace rows of first, 5 are new
    assert len(done) == 305
    latest = {item["sha256"]: item for item in first + second}
    for sha, item in latest.items():
        assert sha in done
        assert done.vector(sha).tobytes() == item["embedding"].tobytes()
        assert done.predictions(sha) == item["predictions"]  # probabilities exactly, labels by class
    order = [f"{i:064x}" for i in (304, 0, 297)]
    assert np.array_equal(done.matrix(order), np.stack([latest[s]["embedding"] for s in order]))
    assert done.item(order[0])["predictions"] == latest[order[0]]["predictions"]
    assert "f" * 64 not in done


def test_each_image_costs_its_vector_and_under_300_bytes_more() -> None:
    n = 20_000
    items = stored(n)  # made first: the sha256 strings belong to the caller, as a scan's files do
    tracemalloc.start()
    before = tracemalloc.get_traced_memory()[0]
    done = Embedded(None, _expected=n)
    for start in range(0, n, 5000):  # as embed_files adds a store look-up's chunk at a time
        done.add(items[start : start + 5000])
    grown = tracemalloc.get_traced_memory()[0] - before
    tracemalloc.stop()
    assert len(done) == n
    per_image = grown / n - DIM * 4
    assert 0 < per_image < 300, f"{per_image:.0f} bytes per image beyond its vector"


def test_vectors_reused_from_the_store_are_keyed_by_the_files_own_sha256_strings(tmp_path) -> None:
    """One string per content, not a second copy from the store (issue 12: ~110 bytes an image)."""
    from types import SimpleNamespace

    from client.embedding import embed_files
    from client.scan import ImageFile
    from client.store import open_store

    identity = {"architecture": "efficientnet_lite0", "weights_sha256": "57" * 32, "embedding_dim": DIM,
                "handler_version": "1.0.0"}  # fmt: skip
    server = SimpleNamespace(url="http://127.0.0.1:8080", model="m")
    items = stored(50)
    files = [ImageFile(f"{tmp_path}/{i}.jpg", f"{i}.jpg", "".join(item["sha256"]), 1) for i, item in enumerate(items)]
    with open_store(tmp_path / "s.sqlite") as store:
        store.remember_endpoint(server.url, server.model, identity)
        store.put_many(identity, items, {f.sha256: f.path for f in files})
        done = embed_files(files, server, store, 8, progress=False)  # type: ignore[arg-type]
    assert (done.reused, done.sent) == (50, 0)
    assert all(done.vectors.shas[done.row(f.sha256)] is f.sha256 for f in files)
    assert done.predictions(files[3].sha256) == items[3]["predictions"]


class RefusingServer:
    """Embeds every upload but those named in ``refuse`` (name -> error code); records what was sent."""

    url, model = "http://127.0.0.1:8080", "m"
    identity = {"architecture": "efficientnet_lite0", "weights_sha256": "57" * 32, "embedding_dim": DIM,
                "handler_version": "1.0.0"}  # fmt: skip

    def __init__(self, refuse: dict[str, str]) -> None:
        self.refuse, self.sent = refuse, []

    def embed_batches(self, batches):
        from client.torchserve_client import Result

        for batch in batches:
            self.sent += [upload.name for upload in batch]
            yield [Result(u.name, {"error": {"code": self.refuse[u.name], "message": f"{u.name} refused"}})
                   if u.name in self.refuse else
                   Result(u.name, {"embedding": [0.5] * DIM, "model": self.identity,
                                   "predictions": [{"index": 1, "label": "goldfish", "probability": 0.9}]})
                   for u in batch]  # fmt: skip


def test_a_file_refused_for_its_bytes_is_not_sent_again_until_asked(tmp_path, capsys) -> None:
    from client.embedding import embed_files
    from client.scan import ImageFile
    from client.store import open_store

    files = [ImageFile(f"{tmp_path}/{name}", name, f"{i:064x}", 1)
             for i, name in enumerate(["ok.jpg", "damaged.jpg", "huge.jpg", "notes.jpg"])]  # fmt: skip
    server = RefusingServer({"damaged.jpg": "corrupt_image", "huge.jpg": "too_many_pixels",
                             "notes.jpg": "unsupported_format"})  # fmt: skip
    with open_store(tmp_path / "s.sqlite") as store:
        first = embed_files(files, server, store, 2, progress=False)  # type: ignore[arg-type]
        assert server.sent == ["ok.jpg", "damaged.jpg", "huge.jpg", "notes.jpg"] and len(first.errors) == 3
        server.sent = []
        again = embed_files(files, server, store, 2, progress=False)  # type: ignore[arg-type]
        # a limit of the server's settings is asked again; what the bytes decide is not
        assert server.sent == ["huge.jpg"] and (again.reused, again.remembered, again.sent) == (1, 2, 1)
        assert again.errors[files[1].sha256] == {"code": "corrupt_image", "message": "damaged.jpg refused"}
        assert "note: 2 files the server refused before are not sent again" in capsys.readouterr().err
        assert again.said() == "sent 1 to the server, reused 1 from the store, 2 refused before (not sent again)"
        server.sent = []
        embed_files(files, server, store, 2, progress=False, retry_failed=True)  # type: ignore[arg-type]
        assert sorted(server.sent) == ["damaged.jpg", "huge.jpg", "notes.jpg"]
