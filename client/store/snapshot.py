"""One model's stored vectors as int8 codes in files beside the SQLite store, memory-mapped.

Loading a million 1280-d vectors from SQLite into RAM takes seconds in every new process; these
files open in a millisecond and a query scans a quarter of float32's bytes. They are derived
data (DESIGN, library scale): written from the store, rebuilt when missing or too far behind,
never the only copy of anything. A search is still exact: the scan gives each row an estimate
of its score *and a bound on the estimate's error*, and every row that could be among the best
is rescored from its float32 vector in the store.

A folder ``<slug>-<seq>`` holds one model's snapshot; ``seq`` is the store's change-log position
it includes, so rows changed after it are known (``vector_changes`` in the SQLite schema).
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import re
import shutil
import tempfile
from collections.abc import Callable, Collection, Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from client.metrics import METRICS, Metric
from client.store.matrix import similarity_keys, top_keys

logger = logging.getLogger(__name__)

FORMAT = 1
LANES = 64  # codes are padded to a multiple of this width (zeros), which the int8 kernel needs
_FILES = ("codes", "scales", "norms", "residuals", "shas", "sorted_shas", "sorted_rows")

# Fetches the stored float32 vectors of some sha256s: (the shas found, their (n, dim) matrix).
Fetch = Callable[[Sequence[str]], tuple[list[str], np.ndarray]]


def slug(model: str) -> str:
    """A file-name-safe name for a model key (which holds slashes)."""
    return hashlib.sha256(model.encode()).hexdigest()[:16]


@dataclass
class Snapshot:
    """The arrays of one snapshot folder, memory-mapped (copy-on-write: nothing writes them back)."""

    folder: Path
    model: str
    seq: int
    dim: int
    codes: np.ndarray  # (n, padded dim) int8: row ~= scale * codes
    scales: np.ndarray  # (n,) float32
    norms: np.ndarray  # (n,) float32: |row| of the float32 vector
    residuals: np.ndarray  # (n,) float32: |row - scale * codes|
    shas: np.ndarray  # (n,) S64: the rows' sha256 in hex
    sorted_shas: np.ndarray  # (n,) S64, sorted, for look-ups by sha
    sorted_rows: np.ndarray  # (n,) int64: the row of each sorted sha
    _kernel: Int8Kernel | None = field(default=None, repr=False)
    _cache: dict[str, tuple[np.ndarray, np.ndarray | None, np.ndarray, np.ndarray]] = field(
        default_factory=dict, repr=False
    )
    _widest: dict[str, tuple[float, float]] = field(default_factory=dict, repr=False)  # max of each bound part

    def __len__(self) -> int:
        return len(self.shas)

    def rows_of(self, shas: Iterable[str]) -> np.ndarray:
        """The rows holding these sha256s (those present), in no particular order."""
        keys = np.array([sha.encode() for sha in shas], dtype="S64")
        if not len(keys) or not len(self):
            return np.empty(0, dtype=np.int64)
        at = np.searchsorted(self.sorted_shas, keys).clip(0, len(self) - 1)
        return self.sorted_rows[at[self.sorted_shas[at] == keys]]

    def estimates(self, query: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Every row's dot product with ``query`` estimated from the codes, and a bound on each error."""
        raw, q, q_err, rel = self._scan(query)
        mult, _, per_q, per_err = self._factors(METRICS["dot"])
        est = raw * mult
        return est, _bound(q, q_err, rel, per_q, per_err, est)

    def _scan(self, query: np.ndarray) -> tuple[np.ndarray, np.float32, np.float32, float]:
        """codes @ query, |query|, the error of the query as the kernel used it, the kernel's relative rounding."""
        if self._kernel is None:
            self._kernel = Int8Kernel(self.codes)
        raw, used, rel = self._kernel.dots(query)
        q_err = np.float32(np.linalg.norm(query - used) + self.dim * 2.0**-23 * np.linalg.norm(used))
        return raw, np.float32(np.linalg.norm(query)), q_err, rel

    def _factors(self, metric: Metric) -> tuple[np.ndarray, np.ndarray | None, np.ndarray, np.ndarray]:
        """Per row, for ``metric``: key = raw * mult (+ add), and what its error bound is made of (``_bound``)."""
        if metric.name not in self._cache:
            inv = np.divide(1.0, self.norms, out=np.zeros_like(self.norms), where=self.norms > 0)
            sq = self.norms * self.norms
            add = similarity_keys(metric, np.zeros_like(inv), inv, sq)  # keys are linear in the dot
            per_dot = similarity_keys(metric, np.ones_like(inv), inv, sq) - add
            self._cache[metric.name] = (self.scales * per_dot, add if add.any() else None,
                                        self.residuals * per_dot, (self.norms + self.residuals) * per_dot)  # fmt: skip
            self._widest[metric.name] = (float(self._cache[metric.name][2].max(initial=0)),
                                         float(self._cache[metric.name][3].max(initial=0)))  # fmt: skip
        return self._cache[metric.name]

    def candidates(
        self, query: np.ndarray, metric: Metric, want: int, exclude: Collection[str],
        changed: Collection[str], fresh: tuple[list[str], np.ndarray], fetch: Fetch,
    ) -> tuple[list[str], np.ndarray]:  # fmt: skip
        """Every row that could be among the ``want`` best (exact), plus the rows in ``changed``.

        Rows in ``changed`` were written after this snapshot: their snapshot rows are ignored and
        ``fresh`` (the current vectors of those still stored) is scored exactly. Nothing in
        ``exclude`` is returned; ``fetch`` gives the float32 vectors of snapshot rows.
        """
        raw, q, q_err, rel = self._scan(query)
        mult, add, per_q, per_err = self._factors(metric)
        keys = np.multiply(raw, mult, out=raw)
        if add is not None:
            keys += add
        keys[self.rows_of([*exclude, *changed])] = -np.inf
        rows = top_keys(keys, want)
        shas, vectors = _fetch_rows(self, rows, fetch)
        kept = [i for i, sha in enumerate(fresh[0]) if sha not in exclude]
        if kept:
            shas += [fresh[0][i] for i in kept]
            vectors = np.concatenate([vectors, fresh[1][kept]])
        if len(shas) >= want:  # the want-th best exact key: only rows that could beat it matter
            exact = _exact_keys(metric, vectors, query)
            floor = np.partition(exact, len(exact) - want)[len(exact) - want]
            # first every row within the largest bound of the floor, then each one's own bound
            # |raw * mult| <= |q'| s|c| per_dot <= (|q| + q_err) per_err, and a rounding's worth more
            widest_q, widest_err = self._widest[metric.name]
            widest = q * widest_q + (q_err + 2 * rel * (q + q_err)) * widest_err
            near = np.flatnonzero(keys >= floor - widest)
            near = near[~np.isin(near, rows)]
            mixed = keys[near] - (add[near] if add is not None else 0)  # raw * mult again
            more = near[keys[near] + _bound(q, q_err, rel, per_q[near], per_err[near], mixed) >= floor]
            if len(more):
                logger.debug("snapshot search: %d rows within the error bound of the best %d", len(more), want)
                more_shas, more_vectors = _fetch_rows(self, more, fetch)
                shas += more_shas
                vectors = np.concatenate([vectors, more_vectors])
        return shas, vectors


def _bound(q: np.float32, q_err: np.float32, rel: float, per_q: np.ndarray, per_err: np.ndarray,
           estimate: np.ndarray) -> np.ndarray:  # fmt: skip
    """|q.m - s q'.c| <= |q| |m - s c| + |q - q'| s|c| + the kernel's rounding, with s|c| <= |m| + |m - s c|.

    ``per_q`` and ``per_err`` carry |m - s c| and |m| + |m - s c|, each scaled as the key scales a dot.
    """
    return q * per_q + q_err * per_err + np.float32(rel) * np.abs(estimate)


def _fetch_rows(snapshot: Snapshot, rows: np.ndarray, fetch: Fetch) -> tuple[list[str], np.ndarray]:
    return fetch([sha.decode() for sha in snapshot.shas[np.sort(rows)]])


def _exact_keys(metric: Metric, vectors: np.ndarray, query: np.ndarray) -> np.ndarray:
    v = vectors.astype(np.float64)
    sq = np.einsum("ij,ij->i", v, v)
    inv = np.divide(1.0, np.sqrt(sq), out=np.zeros_like(sq), where=sq > 0)
    return similarity_keys(metric, v @ query.astype(np.float64), inv, sq)


class Int8Kernel:
    """codes @ query: torch's int8 weight kernel with bfloat16 activations where it exists, else numpy.

    Returns (the dots, the query as actually used, the kernel's relative rounding of each dot).
    """

    def __init__(self, codes: np.ndarray) -> None:
        self.codes = codes
        self._torch = _torch_int8_kernel(codes)

    def dots(self, query: np.ndarray) -> tuple[np.ndarray, np.ndarray, float]:
        padded = np.zeros(self.codes.shape[1], dtype=np.float32)
        padded[: len(query)] = query
        if self._torch is not None:
            out, used = self._torch(padded)
            if np.isfinite(out).all():
                return out, used[: len(query)], 2.0**-7  # bfloat16 output: 8 bits of mantissa, and slack
            logger.warning("the int8 kernel returned non-finite values; scanning with numpy instead")
            self._torch = None
        out = np.empty(len(self.codes), dtype=np.float32)
        for start in range(0, len(out), 16384):  # blocks of a few MiB: the float copy stays in cache
            out[start : start + 16384] = self.codes[start : start + 16384].astype(np.float32) @ padded
        return out, query, 0.0


def _torch_int8_kernel(codes: np.ndarray) -> Callable[[np.ndarray], tuple[np.ndarray, np.ndarray]] | None:
    """torch._weight_int8pack_mm over ``codes``, if torch has it and it agrees with numpy on a probe."""
    try:
        import torch
    except ImportError:
        return None
    mm = getattr(torch, "_weight_int8pack_mm", None)
    if mm is None or codes.shape[1] % LANES or not len(codes):
        return None
    weights = torch.from_numpy(codes)
    ones = torch.ones(len(codes), dtype=torch.bfloat16)

    def run(query: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        q = torch.from_numpy(query).to(torch.bfloat16)
        return mm(q[None], weights, ones)[0].float().numpy(), q.float().numpy()

    # A private kernel: check it on this shape's first rows before trusting it (torch is pinned,
    # and tests/unit/test_store_snapshot.py checks it too).
    probe = np.random.default_rng(0).standard_normal(codes.shape[1]).astype(np.float32)
    head = codes[:64].astype(np.float32)
    got, used = run(probe)
    want = head @ used
    if not np.allclose(got[:64], want, rtol=2.0**-7, atol=1e-3 * (np.abs(head).sum(1).max() * np.abs(used).max() + 1)):
        logger.warning("torch's int8 kernel disagrees with numpy here; scanning with numpy")
        return None
    return run


# --- writing and finding snapshot folders --------------------------------------------------------


def quantize(block: np.ndarray, width: int) -> dict[str, np.ndarray]:
    """Per-row symmetric int8 codes of a float32 block, padded to ``width``, and what bounds their error."""
    peak = np.abs(block).max(axis=1) if block.shape[1] else np.zeros(len(block), np.float32)
    scales = (peak / 127.0).astype(np.float32)
    inv = np.divide(1.0, scales, out=np.zeros_like(scales), where=scales > 0)
    codes = np.zeros((len(block), width), dtype=np.int8)
    codes[:, : block.shape[1]] = np.rint(block * inv[:, None]).clip(-127, 127)
    rest = block - codes[:, : block.shape[1]] * scales[:, None]
    # rounded up a little, so float32 arithmetic here never makes a bound too small
    residuals = (np.sqrt(np.einsum("ij,ij->i", rest, rest, dtype=np.float64)) * (1 + 1e-6) + 1e-30).astype(np.float32)
    norms = np.sqrt(np.einsum("ij,ij->i", block, block, dtype=np.float64)).astype(np.float32)
    return {"codes": codes, "scales": scales, "norms": norms, "residuals": residuals}


def write(root: Path, model: str, seq: int, dim: int, rows: int,
          blocks: Iterable[tuple[Sequence[str], np.ndarray]]) -> Snapshot:  # fmt: skip
    """Writes a snapshot of ``rows`` vectors from ``blocks`` under ``root``, atomically, and opens it."""
    root.mkdir(parents=True, exist_ok=True)
    width = -(-dim // LANES) * LANES
    tmp = Path(tempfile.mkdtemp(prefix=f".{slug(model)}-", dir=root))
    try:
        out = {
            "codes": np.lib.format.open_memmap(tmp / "codes.npy", "w+", np.int8, (rows, width)),
            "shas": np.lib.format.open_memmap(tmp / "shas.npy", "w+", "S64", (rows,)),
            **{name: np.lib.format.open_memmap(tmp / f"{name}.npy", "w+", np.float32, (rows,))
               for name in ("scales", "norms", "residuals")},
        }  # fmt: skip
        at = 0
        for shas, block in blocks:
            if at + len(shas) > rows:
                raise ValueError(f"snapshot of {model}: more than the {rows} rows counted")
            out["shas"][at : at + len(shas)] = [sha.encode() for sha in shas]
            for name, values in quantize(np.asarray(block, dtype=np.float32), width).items():
                out[name][at : at + len(shas)] = values
            at += len(shas)
        if at != rows:
            raise ValueError(f"snapshot of {model}: {at} rows read, {rows} counted")
        order = np.argsort(out["shas"], kind="stable")
        np.save(tmp / "sorted_rows.npy", order.astype(np.int64))
        np.save(tmp / "sorted_shas.npy", out["shas"][order])
        for array in out.values():
            array.flush()
        del out
        (tmp / "meta.json").write_text(json.dumps({"format": FORMAT, "model": model, "seq": seq, "dim": dim,
                                                   "rows": rows}))  # fmt: skip
        final = root / f"{slug(model)}-{seq}"
        try:
            os.rename(tmp, final)
        except OSError:  # another process wrote the same snapshot first: use that one
            if not final.is_dir():
                raise
            shutil.rmtree(tmp, ignore_errors=True)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    for older in _folders(root, model):
        if older[0] < seq:
            shutil.rmtree(older[1], ignore_errors=True)  # our own derived files; a reader's maps stay valid
    opened = open_newest(root, model)
    if opened is None or opened.seq < seq:
        raise OSError(f"the snapshot just written to {final} cannot be read back")
    return opened


def _folders(root: Path, model: str) -> list[tuple[int, Path]]:
    pattern = re.compile(rf"{slug(model)}-(\d+)")
    try:
        entries = list(root.iterdir())
    except OSError:
        return []
    found = [(int(m.group(1)), entry) for entry in entries if (m := pattern.fullmatch(entry.name))]
    return sorted(found, reverse=True)


def open_newest(root: Path, model: str) -> Snapshot | None:
    """The newest readable snapshot of ``model`` under ``root``, or None."""
    for seq, folder in _folders(root, model):
        try:
            meta = json.loads((folder / "meta.json").read_text())
            if meta.get("format") != FORMAT or meta.get("model") != model or meta.get("seq") != seq:
                continue
            arrays = {name: np.load(folder / f"{name}.npy", mmap_mode="c") for name in _FILES}
        except (OSError, ValueError) as err:
            logger.info("snapshot %s is unreadable (%s); it will be rebuilt", folder, err)
            continue
        rows = meta["rows"]
        if any(len(a) != rows for a in arrays.values()) or arrays["codes"].shape[1] < meta["dim"]:
            logger.info("snapshot %s has arrays of the wrong size; it will be rebuilt", folder)
            continue
        return Snapshot(folder=folder, model=model, seq=seq, dim=meta["dim"], **arrays)
    return None
