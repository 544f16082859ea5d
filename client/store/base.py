"""The store's interface and row types, and the checks every back end applies alike.

A row is found by (model, sha256 of the file bytes), so identical bytes are embedded
once per model and a different model never reuses another's vectors. Callers name
the model by its identity (as the server reports it); the store derives the key.
Back ends only *find candidates*; the final scores always come from
``client.metrics``, so every back end gives the same numbers for the same vectors.
"""

from __future__ import annotations

import re
from abc import ABC, abstractmethod
from collections.abc import Collection, Iterable, Mapping, Sequence
from types import TracebackType
from typing import Any, TypedDict

import numpy as np

from client.metrics import Metric, get_metric

_SHA256 = re.compile(r"[0-9a-f]{64}")
# Rescoring a few more candidates than asked for absorbs float32 rounding in the
# fast candidate scan (and the approximation of an HNSW walk) at the boundary.
_EXTRA_CANDIDATES = 16

PathsBySha = Mapping[str, str | Collection[str]]  # sha256 -> a path or several


class ModelIdentity(TypedDict):
    """Which model made an embedding, as the server reports it in every response."""

    architecture: str
    weights_sha256: str
    embedding_dim: int
    handler_version: str


class StoredModel(ModelIdentity):
    model: str  # model_key(identity)
    count: int  # images stored for it


class StoredImage(TypedDict):
    """One embedded image."""

    sha256: str
    embedding: np.ndarray  # float32, shape (embedding_dim,)
    predictions: list[dict[str, Any]]  # top-k as served: {"index", "label", "probability"}


class StoredFileState(TypedDict):
    """What ``stat`` said about the file at ``path`` when its bytes had sha256 ``sha256``: while device,
    inode, size and mtime_ns stay the same, the bytes are taken to be the same (a rerun costs a stat)."""

    path: str  # absolute and resolved, as the scan produces it
    device: int
    inode: int
    size: int
    mtime_ns: int
    sha256: str


class StoreError(Exception):
    """The store cannot be used as asked; the message says what to do next."""


IDENTITY_FIELDS = tuple(ModelIdentity.__annotations__)


def model_key(identity: Mapping[str, Any]) -> str:
    """A stable, readable name for a model, e.g. ``resnet18/5c106cde386e/1.0.0``.

    Twelve hex digits of the weights hash tell weights files apart in practice;
    the full identity is stored beside the key and checked on every write, so a
    clash could never mix two models' vectors silently.
    """
    check_identity(identity)
    return f"{identity['architecture']}/{identity['weights_sha256'][:12]}/{identity['handler_version']}"


def identity_of(row: Sequence[Any]) -> ModelIdentity:
    """A ModelIdentity from its fields in IDENTITY_FIELDS order (a database row)."""
    return ModelIdentity(**dict(zip(IDENTITY_FIELDS, row, strict=True)))  # type: ignore[typeddict-item]


def stored_model_of(row: Sequence[Any]) -> StoredModel:
    """A StoredModel from (model, *IDENTITY_FIELDS, count)."""
    model, *fields, count = row
    return StoredModel(model=model, **identity_of(fields), count=count)  # type: ignore[typeddict-item]


class EmbeddingStore(ABC):
    """What the client needs from a store; ``client.store`` lists the back ends."""

    @abstractmethod
    def get_many(self, identity: Mapping[str, Any], sha256s: Iterable[str]) -> dict[str, StoredImage]:
        """The stored images among ``sha256s``; absent ones are simply missing."""

    @abstractmethod
    def put_many(
        self, identity: Mapping[str, Any], items: Sequence[StoredImage], paths: PathsBySha | None = None
    ) -> None:
        """Insert or replace ``items`` in one transaction, and record ``paths`` (sha256 -> path or paths)."""

    @abstractmethod
    def remember_paths(self, paths: PathsBySha) -> None:
        """Record where contents were seen (sha256 -> path or paths); paths belong to contents, not models."""

    @abstractmethod
    def remember_endpoint(self, url: str, name: str, identity: Mapping[str, Any]) -> None:
        """Note that the server at ``url`` serves model ``identity`` under ``name``."""

    @abstractmethod
    def endpoint(self, url: str, name: str) -> ModelIdentity | None:
        """The identity last noted for ``url`` and ``name``: a rerun finds its vectors without asking the server."""

    @abstractmethod
    def count(self, identity: Mapping[str, Any]) -> int: ...

    @abstractmethod
    def models(self) -> list[StoredModel]: ...

    @abstractmethod
    def paths(self, identity: Mapping[str, Any], sha256s: Iterable[str] | None = None) -> dict[str, list[str]]:
        """Known paths per stored sha256 of the model, most recently seen first."""

    @abstractmethod
    def known_paths(self, under: str) -> dict[str, str]:
        """path -> sha256 of every path recorded in folder ``under`` or below it (paths as they were recorded)."""

    @abstractmethod
    def forget_paths(self, paths: Iterable[str]) -> int:
        """Forgets what was at ``paths`` (files deleted or rewritten), their file states, and the vectors of
        every content that is then at no known path; returns how many contents were forgotten."""

    @abstractmethod
    def file_states(self, paths: Iterable[str]) -> dict[str, StoredFileState]:
        """The file state last remembered at each of ``paths``; unknown paths are simply missing."""

    @abstractmethod
    def remember_file_states(self, states: Sequence[StoredFileState]) -> None:
        """Records ``states`` (one per path: the last one wins) in one transaction, replacing older ones."""

    @abstractmethod
    def remember_failures(self, identity: Mapping[str, Any], failures: Mapping[str, Mapping[str, str]]) -> None:
        """Records that the server refused each content (sha256 -> its error's ``code`` and ``message``) for
        this model, replacing what an earlier refusal said."""

    @abstractmethod
    def failures(self, identity: Mapping[str, Any], sha256s: Iterable[str]) -> dict[str, dict[str, str]]:
        """The remembered refusals of those of ``sha256s`` that have one: sha256 -> {"code", "message"}."""

    @abstractmethod
    def mark_not_duplicates(self, pairs: Iterable[tuple[str, str]]) -> None:
        """Remembers that each pair of contents (sha256s) is not a duplicate, whatever the vectors say."""

    @abstractmethod
    def not_duplicates(self) -> set[tuple[str, str]]:
        """Every pair marked by ``mark_not_duplicates``, each as (smaller sha256, larger sha256)."""

    def prepare_search(self, identity: Mapping[str, Any]) -> None:
        """Brings what speeds up ``search`` of this model up to date now, so the next search does not pay
        for it (index.py calls it after a pass that wrote rows). Nothing to do by default."""

    @abstractmethod
    def close(self) -> None: ...

    @abstractmethod
    def _candidates(
        self, model: str, query: np.ndarray, metric: Metric, want: int, exclude: Collection[str]
    ) -> tuple[list[str], np.ndarray]:
        """Up to ``want`` likely-best (sha256s, float32 vectors) of ``model`` (a key), never one in ``exclude``."""

    def search(
        self, identity: Mapping[str, Any], query: np.ndarray, k: int, metric: str = "cosine",
        exclude: Collection[str] = (),
    ) -> list[tuple[str, float]]:  # fmt: skip
        """The ``k`` stored images nearest to ``query`` as (sha256, score), best first."""
        model = model_key(identity)
        chosen = get_metric(metric)
        vector = np.asarray(query, dtype=np.float32)
        if vector.ndim != 1 or not np.isfinite(vector).all():
            raise ValueError(f"query must be one finite vector, got shape {vector.shape}")
        if k <= 0:
            return []
        shas, vectors = self._candidates(model, vector, chosen, k + _EXTRA_CANDIDATES, frozenset(exclude))
        if not shas:
            return []
        # float64 so that every back end reports the reference value, not float32 noise.
        scores = chosen.score(vector.astype(np.float64), vectors.astype(np.float64))
        return [(shas[i], float(scores[i])) for i in chosen.best(scores, k)]

    def __enter__(self) -> EmbeddingStore:
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()


# --- checks every back end applies ---------------------------------------------------------------


def check_identity(identity: Mapping[str, Any]) -> None:
    if isinstance(identity, str):  # the store used to take model_key(identity): say what it takes now
        raise ValueError(f"expected a model identity mapping, not the model_key string {identity!r}")
    missing = [name for name in IDENTITY_FIELDS if name not in identity]
    if missing:
        raise ValueError(f"model identity lacks {', '.join(missing)}: {dict(identity)!r}")
    dim = identity["embedding_dim"]
    if not isinstance(dim, int) or isinstance(dim, bool) or dim <= 0:
        raise ValueError(f"model identity has a bad embedding_dim {dim!r}")


def check_put(identity: Mapping[str, Any], items: Sequence[StoredImage]) -> tuple[list[StoredImage], np.ndarray]:
    """Items deduplicated by sha256 (last wins) and their embeddings as one float32 matrix."""
    model = model_key(identity)
    unique = list({item["sha256"]: item for item in items}.values())
    dim = identity["embedding_dim"]
    for item in unique:
        check_sha(item["sha256"])
        if np.shape(item["embedding"]) != (dim,):
            raise ValueError(
                f"embedding of {item['sha256']} has shape {np.shape(item['embedding'])}, "
                f"but model {model} makes ({dim},) vectors"
            )
    matrix = np.array([item["embedding"] for item in unique], dtype=np.float32).reshape(len(unique), dim)
    if not np.isfinite(matrix).all():
        # One NaN would make every later search of this model meaningless.
        raise ValueError("embeddings contain NaN or infinity; refusing to store them")
    return unique, matrix


def check_sha(sha: str) -> None:
    if not isinstance(sha, str) or not _SHA256.fullmatch(sha):
        raise ValueError(f"expected a lowercase hex sha256 of the file bytes, got {sha!r}")


def check_identity_matches(model: str, stored: Mapping[str, Any], identity: Mapping[str, Any]) -> None:
    for name in IDENTITY_FIELDS:
        if stored[name] != identity[name]:
            raise StoreError(
                f"model key {model!r} is already stored with {name}={stored[name]!r}, not {identity[name]!r}; "
                "use a new store file (or bump handler_version) for this model"
            )


def pair_rows(pairs: Iterable[tuple[str, str]]) -> list[tuple[str, str]]:
    """Pairs of distinct sha256s, each ordered (smaller, larger), so a pair has one row whichever way it was given."""
    rows = set()
    for a, b in pairs:
        check_sha(a)
        check_sha(b)
        if a == b:
            raise ValueError(f"{a} is one content (identical bytes): it cannot be marked as not a duplicate of itself")
        rows.add((min(a, b), max(a, b)))
    return sorted(rows)


def folder_range(under: str) -> tuple[str, str]:
    """(low, high) such that low <= path < high holds exactly for the paths inside folder ``under``:
    '0' is the character after '/', so the range is one index walk and needs no LIKE escaping."""
    base = under.rstrip("/")
    return base + "/", base + "0"


# stat's device and inode numbers are unsigned 64-bit; both databases store signed 64-bit integers
_U64, _I64_MAX = 1 << 64, (1 << 63) - 1


def file_state_rows(states: Sequence[StoredFileState]) -> list[tuple[str, int, int, int, int, str]]:
    """(path, device, inode, size, mtime_ns, sha256) per path (the last state of a path wins), checked,
    with device and inode folded into signed 64-bit."""
    unique = {state["path"]: state for state in states}
    rows = []
    for path, s in sorted(unique.items()):
        check_sha(s["sha256"])
        if not isinstance(path, str) or not path.startswith("/"):
            raise ValueError(f"file states are recorded at absolute paths, got {path!r}")
        fold = [v - _U64 if v > _I64_MAX else v for v in (s["device"], s["inode"])]
        rows.append((path, fold[0], fold[1], s["size"], s["mtime_ns"], s["sha256"]))
    return rows


def file_state_of(row: Sequence[Any]) -> StoredFileState:
    """A StoredFileState from (path, device, inode, size, mtime_ns, sha256) as ``file_state_rows`` stored it."""
    path, device, inode, size, mtime_ns, sha = row
    device, inode = (v + _U64 if v < 0 else v for v in (device, inode))
    return StoredFileState(path=path, device=device, inode=inode, size=size, mtime_ns=mtime_ns, sha256=sha)


def failure_rows(model: str, failures: Mapping[str, Mapping[str, str]]) -> list[tuple[str, str, str, str]]:
    """(model, sha256, code, message) per content, checked."""
    rows = []
    for sha, error in failures.items():
        check_sha(sha)
        rows.append((model, sha, str(error["code"]), str(error["message"])))
    return rows


def path_rows(paths: PathsBySha) -> list[tuple[str, str]]:
    rows: list[tuple[str, str]] = []
    for sha, where in paths.items():
        check_sha(sha)
        rows.extend((sha, p) for p in ([where] if isinstance(where, str) else where))
    return rows
