"""Embeds files through the server unless the store already has them (by content and model)."""

from __future__ import annotations

import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Sequence

import numpy as np
from tqdm import tqdm

from client.scan import ImageFile
from client.store import EmbeddingStore, StoredImage
from client.store.matrix import VectorMatrix
from client.torchserve_client import EmbeddingClient, ServerError, Upload


# Store look-ups per round trip: their StoredImage objects live only until copied into the matrix.
FETCH_CHUNK = 5000
# Refusals that the bytes alone decide (handler/imgsim/decode.py): the store remembers them, so a
# rerun does not send a damaged file again. A refusal that depends on the server's settings
# (too_many_pixels, too_large) or a failed request is not remembered.
REMEMBERED_CODES = frozenset({"empty", "corrupt_image", "unsupported_format"})


@dataclass
class Embedded:
    """What is known after a run: by sha256, one row each of a float32 matrix and of compact labels; the failures.

    Memory grows by each image's vector and a few dozen bytes (DESIGN, library scale): the labels
    are class indices and probabilities in arrays, their names kept once per class.
    """

    identity: dict | None
    vectors: VectorMatrix | None = None  # made with the model's width at the first row
    errors: dict[str, dict] = field(default_factory=dict)  # sha256 -> {"code", "message"}
    sent: int = 0
    reused: int = 0
    remembered: int = 0  # contents the server refused in an earlier run: not sent again
    _classes: np.ndarray = field(default_factory=lambda: np.empty((0, 0), dtype=np.int32))  # (rows, k), -1: none
    _probabilities: np.ndarray = field(default_factory=lambda: np.empty((0, 0), dtype=np.float64))
    _names: dict[int, str] = field(default_factory=dict)  # class index -> label
    _expected: int = 0  # rows to make room for at once (growing a large matrix by doubling copies it)

    def __contains__(self, sha256: object) -> bool:
        return self.vectors is not None and sha256 in self.vectors.rows

    def __len__(self) -> int:
        return 0 if self.vectors is None else len(self.vectors.shas)

    def add(self, items: Sequence[StoredImage]) -> None:
        """Rows for ``items`` (a later row for a sha256 replaces the earlier one)."""
        if not items:
            return
        matrix = np.stack([np.asarray(item["embedding"], dtype=np.float32) for item in items])
        if self.vectors is None or self.vectors.dim != matrix.shape[1]:  # (a new width: the server changed model)
            self.vectors = VectorMatrix(dim=matrix.shape[1])
            self._classes, self._probabilities, self._names = self._classes[:0], self._probabilities[:0], {}
        self.vectors.reserve(max(self._expected, len(self) + len(items)))
        self.vectors.upsert([item["sha256"] for item in items], matrix)
        k = max(self._classes.shape[1], *(len(item["predictions"]) for item in items))
        rows = len(self)
        if rows > len(self._classes) or k > self._classes.shape[1]:
            grow = max(rows, self._expected, 2 * len(self._classes))
            classes = np.full((grow, k), -1, dtype=np.int32)
            probabilities = np.zeros((grow, k), dtype=np.float64)
            classes[: len(self._classes), : self._classes.shape[1]] = self._classes
            probabilities[: len(self._classes), : self._classes.shape[1]] = self._probabilities
            self._classes, self._probabilities = classes, probabilities
        for item in items:
            row = self.vectors.rows[item["sha256"]]
            self._classes[row] = -1
            for n, p in enumerate(item["predictions"]):
                self._classes[row, n], self._probabilities[row, n] = p["index"], p["probability"]
                self._names.setdefault(p["index"], p["label"])

    def said(self) -> str:
        """What was sent and what was not, for the line a command ends with."""
        remembered = f", {self.remembered} refused before (not sent again)" if self.remembered else ""
        return f"sent {self.sent} to the server, reused {self.reused} from the store{remembered}"

    def row(self, sha256: str) -> int:
        return self.vectors.rows[sha256]  # type: ignore[union-attr]

    def vector(self, sha256: str) -> np.ndarray:
        return self.vectors.vectors[self.row(sha256)]  # type: ignore[union-attr]

    def live(self) -> np.ndarray:
        """Every row's vector, in row order (a view: no copy)."""
        return self.vectors.vectors[: len(self)] if self.vectors is not None else np.empty((0, 0), np.float32)

    def predictions(self, sha256: str) -> list[dict]:
        row = self.row(sha256)
        return [{"index": int(c), "label": self._names[int(c)], "probability": float(p)}
                for c, p in zip(self._classes[row], self._probabilities[row], strict=True) if c >= 0]  # fmt: skip

    def item(self, sha256: str) -> StoredImage:
        return StoredImage(sha256=sha256, embedding=self.vector(sha256), predictions=self.predictions(sha256))

    def matrix(self, sha256s: Sequence[str]) -> np.ndarray:
        """The vectors of ``sha256s``, in that order, as a new matrix."""
        return self.live()[np.fromiter((self.row(sha) for sha in sha256s), dtype=np.int64, count=len(sha256s))]


def embed_files(
    files: Sequence[ImageFile], client: EmbeddingClient, store: EmbeddingStore | None, batch_size: int,
    progress: bool = True, retry_failed: bool = False,
) -> Embedded:  # fmt: skip
    """Every distinct content in ``files`` ends up embedded or with an error, each embedded once. A content
    the server refused before for what its bytes are (REMEMBERED_CODES) keeps that error and is not
    sent, unless ``retry_failed``."""
    first_file: dict[str, ImageFile] = {}
    for f in files:
        first_file.setdefault(f.sha256, f)
    identity = store.endpoint(client.url, client.model) if store else None
    done = Embedded(identity, _expected=len(first_file))
    if store and identity:
        shas = list(first_file)
        for start in range(0, len(shas), FETCH_CHUNK):
            chunk = shas[start : start + FETCH_CHUNK]
            found = store.get_many(identity, chunk)
            for sha in chunk:  # keyed by the files' own sha256 strings, not the store's copies: one per content
                if sha in found:
                    found[sha]["sha256"] = sha
            done.add(list(found.values()))
        done.reused = len(done)
        if not retry_failed:
            done.errors.update(store.failures(identity, [sha for sha in first_file if sha not in done]))
            done.remembered = len(done.errors)
            _say_remembered(done, first_file)
        if done.reused + done.remembered == len(first_file):
            store.remember_paths({f.sha256: f.path for f in files if f.sha256 in done})
            return done
    by_name: dict[str, ImageFile] = {}
    for f in (first_file[sha] for sha in first_file if sha not in done and sha not in done.errors):
        # a reference outside the folder may share its name with a folder file: keep the two apart
        by_name[f.name if f.name not in by_name else f"{f.name}@{f.sha256[:12]}"] = f
    missing = list(by_name)
    batches = [
        [Upload(name, Path(by_name[name].path)) for name in missing[i : i + batch_size]]
        for i in range(0, len(missing), batch_size)
    ]
    bar = tqdm(total=len(missing), unit="img", desc="embedding", file=sys.stderr, disable=not progress)
    saved = 0
    refused: dict[str, dict] = {}  # to remember once the model is known (it comes with the first vector)
    try:
        for results in client.embed_batches(batches):
            new: list[StoredImage] = []
            paths: dict[str, str] = {}
            for result in results:
                f = by_name[result.name]
                if result.error:
                    done.errors[f.sha256] = result.error
                    if result.error.get("code") in REMEMBERED_CODES:
                        refused[f.sha256] = result.error
                    tqdm.write(f"warning: {f.path}: {result.error['code']}: {result.error['message']}", file=sys.stderr)
                    continue
                if done.identity != result.body["model"]:
                    _remember_model(done, result.body["model"], store, client)
                item: StoredImage = {
                    "sha256": f.sha256,
                    "embedding": np.asarray(result.body["embedding"], dtype=np.float32),
                    "predictions": result.body["predictions"],
                }
                new.append(item)
                paths[f.sha256] = f.path
            done.add(new)
            if store and new:  # one transaction per request: a killed run keeps every finished batch
                store.put_many(done.identity, new, paths)
                saved += len(new)
            if store and refused and done.identity:
                store.remember_failures(done.identity, refused)
                refused = {}
            done.sent += len(results)
            bar.update(len(results))
    except ServerError as exc:
        if saved:  # say that the work done so far is not lost, and how to go on
            raise type(exc)(
                f"{exc}\nThe {saved} images embedded before that are saved in the store: "
                "rerun the same command to embed only the rest"
            ) from None
        raise
    finally:
        bar.close()
    if (done.reused or done.remembered) and done.identity != identity:
        # the server's model changed under us: what came from the store belonged to the old one
        return embed_files(files, client, store, batch_size, progress, retry_failed)
    if store and done.identity:
        store.remember_paths({f.sha256: f.path for f in files if f.sha256 in done})
    return done


def _say_remembered(done: Embedded, first_file: dict[str, ImageFile]) -> None:
    if not done.remembered:
        return
    example = next(first_file[sha] for sha in done.errors)
    error = done.errors[example.sha256]
    tqdm.write(f"note: {done.remembered} files the server refused before are not sent again, such as {example.path} "
               f"({error['code']}: {error['message']}); --retry-failed sends them", file=sys.stderr)  # fmt: skip


def _remember_model(done: Embedded, identity: dict, store: EmbeddingStore | None, client: EmbeddingClient) -> None:
    if done.identity is not None:
        tqdm.write(
            f"note: {client.url} now serves {identity['architecture']} (weights {identity['weights_sha256'][:12]}); "
            "vectors stored for the previous model are not reused",
            file=sys.stderr,
        )
    done.identity = identity
    if store:
        store.remember_endpoint(client.url, client.model, identity)
