"""Duplicate candidate pairs, exact scan against the ANN index: time, recall, extra pairs, peak memory.

The vectors are synthetic and shaped like embeddings (bench/dedup_calibration.py's
``synthetic``: non-negative, clustered by subject, 5 % planted near copies), so every row
has real neighbours above the threshold; pure random 1280-d vectors have none. The ANN
search runs first, so the peak memory printed after it is its own.

Examples:
  .venv/bin/python bench/ann_pairs.py --n 100000              # exact vs ANN: time, recall, extra pairs
  .venv/bin/python bench/ann_pairs.py --n 1000000 --no-exact  # ANN alone (exact would take hours)
  .venv/bin/python bench/ann_pairs.py --crossover             # where ANN starts to beat the exact scan
"""

from __future__ import annotations

import argparse
import resource
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from dedup_calibration import synthetic  # noqa: E402  (one generator for every scale figure)

from client.duplicates import CALIBRATED, unit_rows  # noqa: E402
from client.duplicates.ann import NPROBE, ann_candidate_pairs  # noqa: E402
from client.duplicates.pairs import cosine_pairs  # noqa: E402


def peak_mib() -> float:
    """The peak resident memory since the last ``reset_peak`` (Linux VmHWM), in MiB."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def reset_peak() -> None:
    """Forget the peak of generating the vectors, so the one printed is the search's (Linux only)."""
    try:
        Path("/proc/self/clear_refs").write_text("5")
    except OSError:
        pass


def log(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


def sampled_recall(unit: np.ndarray, threshold: float, ai: np.ndarray, aj: np.ndarray, rows: int) -> str:
    """Recall on the pairs of ``rows`` random rows, each scored exactly against every row (no cap per row)."""
    n = len(unit)
    picked = np.sort(np.random.default_rng(1).choice(n, size=min(rows, n), replace=False))
    want = []
    for start in range(0, len(picked), 256):
        block = picked[start : start + 256]
        r, c = np.nonzero(unit[block] @ unit.T >= threshold)
        a, b = block[r], c
        want.append((np.minimum(a, b) * n + np.maximum(a, b))[a != b])
    want = np.unique(np.concatenate(want))
    found = np.isin(want, ai * n + aj).mean() if len(want) else 1.0
    return f"sampled recall {found:.4f} on the {len(want)} pairs of {len(picked)} random rows (exact, no cap per row)"


def compare(n: int, dim: int, threshold: float, exact: bool, nprobes: list[int], sample: int) -> str:
    log(f"generating {n} x {dim} synthetic vectors ...")
    unit, planted = synthetic(n, dim)
    unit_rows(unit, out=unit)
    before = peak_mib()
    lines = []
    for nprobe in nprobes:
        reset_peak()
        started = time.perf_counter()
        ai, aj, _ = ann_candidate_pairs(unit, threshold, nprobe=nprobe)
        ann_s = time.perf_counter() - started
        line = (f"{n} x {dim} float32 ({unit.nbytes / 2**20:.0f} MiB), {planted} planted copies, threshold "
                f"{threshold}: ANN (nprobe {nprobe}) {ann_s:.1f} s, {len(ai)} pairs, peak RSS {peak_mib():.0f} MiB "
                f"(generating them peaked at {before:.0f} MiB)")  # fmt: skip
        if sample:
            line += "; " + sampled_recall(unit, threshold, ai, aj, sample)
        log(line)
        lines.append(line)
    line = lines[-1]
    if exact:
        log("now the exact scan ...")
        started = time.perf_counter()
        ei, ej, _ = cosine_pairs(unit, threshold)
        exact_s = time.perf_counter() - started
        want, got = ei * n + ej, ai * n + aj
        recall = np.isin(want, got).mean() if len(want) else 1.0
        extra = int((~np.isin(got, want)).sum())
        line += f"; exact {exact_s:.1f} s, {len(ei)} pairs; recall {recall:.4f}, extra pairs {extra}"
    return line


def crossover(dim: int, threshold: float) -> str:
    rows = []
    for n in (5000, 10000, 20000, 40000):
        unit, _ = synthetic(n, dim)
        unit_rows(unit, out=unit)
        times = []
        for search in (cosine_pairs, ann_candidate_pairs):
            started = time.perf_counter()
            search(unit, threshold)
            times.append(time.perf_counter() - started)
        rows.append(f"N={n}: exact {times[0]:.1f} s, ANN {times[1]:.1f} s")
        log(rows[-1])
    return "; ".join(rows)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="ann_pairs.py", description=__doc__.splitlines()[0],
                                epilog=__doc__[__doc__.index("Examples:"):],
                                formatter_class=argparse.RawDescriptionHelpFormatter)  # fmt: skip
    p.add_argument("--n", type=int, default=100_000, help="vectors (default 100000)")
    p.add_argument("--dim", type=int, default=1280, help="their width (default 1280, efficientnet_lite0's)")
    p.add_argument("--threshold", type=float, default=CALIBRATED["efficientnet_lite0"].near_low,
                   help="cosine (default efficientnet_lite0's near_low, the lowest in play without --similar)")  # fmt: skip
    p.add_argument("--no-exact", action="store_true", help="time the ANN search alone")
    p.add_argument("--nprobe", type=lambda v: [int(x) for x in v.split(",")], default=[NPROBE],
                   help=f"cells searched per row, several: 16,48 (default {NPROBE})")  # fmt: skip
    p.add_argument("--sample-recall", type=int, default=0, metavar="ROWS",
                   help="also estimate recall from ROWS random rows scored against every row (for --no-exact)")  # fmt: skip
    p.add_argument("--crossover", action="store_true", help="time both at 5,000-40,000 vectors")
    args = p.parse_args(argv)
    print(crossover(args.dim, args.threshold) if args.crossover else
          compare(args.n, args.dim, args.threshold, not args.no_exact, args.nprobe, args.sample_recall))  # fmt: skip
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
