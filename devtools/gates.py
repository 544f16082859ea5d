"""The gates an engine or lower precision must pass before an architecture runs it by default,
and the images they are taken on. bench/precision_gates.py runs them in full (docs/ENGINES.md);
tests/unit/test_precision_gates.py checks the shipped defaults against them on a few images.
"""

from __future__ import annotations

import warnings
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from devtools import CACHE
from devtools.photos import noisy_camera_corpus

# The gates (the numbers); eager fp32 is the reference of every one.
COSINE_MEDIAN, COSINE_MIN = 0.9999, 0.999
P_AT_K, P_AT_K_TOLERANCE = 10, 0.005
F1_TOLERANCE = 0.002  # group F1 must not drop; this much is rounding between runs
REFERENCE = ("eager", "fp32")
BATCH = 16  # images per engine call

OPENCLIPART = Path("/usr/share/openclipart/png")
# Folders of everyday objects holding 28-110 drawings of their own (icons, flags, cards, shapes
# and the mixed top-level folders left out): one class each.
CLASSES = (
    "animals/birds", "animals/bugs", "animals/mammals", "buildings/homes", "computer/hardware", "food/beverages",
    "food/breads_and_carbs", "food/desserts", "food/fruit", "food/meats_and_eggs", "plants/flowers",
    "recreation/music", "recreation/sports", "recreation/toys", "tools/weapons", "transportation/boating",
    "transportation/vehicles",
)  # fmt: skip
LABELLED_MAX_PIXELS = 16_000_000  # a handful of posters are 20-170 MP: seconds and gigabytes each to decode

# --- the gates (pure) ----------------------------------------------------------------------------


def cosines(reference: np.ndarray, candidate: np.ndarray) -> np.ndarray:
    """Row-wise cosine similarity of two (N, D) arrays."""
    a, b = np.asarray(reference, dtype=np.float64), np.asarray(candidate, dtype=np.float64)
    return (a * b).sum(1) / np.maximum(np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1), 1e-12)


def cosine_gate(reference: np.ndarray, candidate: np.ndarray) -> dict:
    """Median and min cosine of each candidate vector with its reference, and whether both clear the gate."""
    c = cosines(reference, candidate)
    median, low = float(np.median(c)), float(c.min())
    return {"median": median, "min": low, "pass": median >= COSINE_MEDIAN and low >= COSINE_MIN}


def precision_at_k(vectors: np.ndarray, labels: list, k: int = P_AT_K) -> float:
    """Mean over images of the share of its k nearest neighbours by cosine (itself excluded) with its label."""
    v = np.asarray(vectors, dtype=np.float64)
    if len(v) <= k:
        raise ValueError(f"precision@{k} needs more than {k} vectors, got {len(v)}")
    u = v / np.maximum(np.linalg.norm(v, axis=1, keepdims=True), 1e-12)
    similarity = u @ u.T
    np.fill_diagonal(similarity, -np.inf)
    nearest = np.argsort(-similarity, axis=1, kind="stable")[:, :k]  # ties: the lower index first
    y = np.asarray(labels)
    return float((y[nearest] == y[:, None]).mean())


def not_lower(reference: float, candidate: float, tolerance: float) -> bool:
    return candidate >= reference - tolerance - 1e-12


def gate_failures(cosine: dict, p_at_k: tuple[float, float] | None, f1: tuple[float, float] | None) -> list[str]:
    """Why a candidate fails, [] when it passes. ``p_at_k`` and ``f1`` are (eager fp32, candidate), None if not taken."""
    failures = []
    if cosine["median"] < COSINE_MEDIAN:
        failures.append(f"cosine median {cosine['median']:.5f} < {COSINE_MEDIAN}")
    if cosine["min"] < COSINE_MIN:
        failures.append(f"cosine min {cosine['min']:.4f} < {COSINE_MIN}")
    if p_at_k is not None and not not_lower(*p_at_k, P_AT_K_TOLERANCE):
        failures.append(f"p@{P_AT_K} {p_at_k[1]:.3f} < {p_at_k[0]:.3f} - {P_AT_K_TOLERANCE}")
    if f1 is not None and not not_lower(*f1, F1_TOLERANCE):
        failures.append(f"dedup F1 {f1[1]:.3f} < {f1[0]:.3f} - {F1_TOLERANCE}")
    return failures


def gates_pass(cosine: dict, p_at_k: tuple[float, float] | None, f1: tuple[float, float] | None) -> bool:
    return not gate_failures(cosine, p_at_k, f1)


# --- images --------------------------------------------------------------------------------------


def noisy_photos(count: int, seed: int = 0) -> list[Path]:
    """``count`` noisy camera JPEGs, in a folder of this benchmark's own (other benchmarks remake theirs per count)."""
    return noisy_camera_corpus(count, seed, CACHE / f"precision-gates-noisy-{count}-seed{seed}")


def labelled_set(per_class: int = 0, classes: tuple[str, ...] = CLASSES) -> tuple[list[Path], list[str]]:
    """The clip-art files and their classes: the first ``per_class`` of each class by name (0: all)."""
    if not OPENCLIPART.is_dir():
        raise FileNotFoundError(
            f"{OPENCLIPART} is missing: the labelled clip-art comes from Debian openclipart-png "
            "(`make setup` installs it, or apt-get install openclipart-png)"
        )
    files, labels = [], []
    for name in classes:
        kept = [p for p in sorted((OPENCLIPART / name).glob("*.png")) if _pixels(p) <= LABELLED_MAX_PIXELS]
        kept = kept[:per_class] if per_class else kept
        files += kept
        labels += [name] * len(kept)
    return files, labels


def _pixels(path: Path) -> int:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # PIL's decompression-bomb warning: only the header is read here
        with Image.open(path) as image:
            return image.size[0] * image.size[1]


def crops(files: list[Path], spec) -> torch.Tensor:
    """uint8 (N, 3, S, S) crops of ``files`` decoded as the pipeline decodes (transparency over white)."""
    from imgsim.decode import decode_image
    from imgsim.pipeline import PipelineConfig
    from imgsim.preprocess import crop_uint8

    config = PipelineConfig()
    draft = spec.resize_size if config.fast_jpeg_decode else None

    def one(path: Path) -> torch.Tensor:
        return crop_uint8(decode_image(path.read_bytes(), config.max_image_pixels, draft_side=draft), spec)

    with ThreadPoolExecutor(max(1, torch.get_num_threads())) as pool:  # PIL releases the GIL while it decodes
        return torch.stack(list(pool.map(one, files)))


def features(engine, pixels: torch.Tensor, spec) -> np.ndarray:
    from imgsim.preprocess import normalize

    parts = [engine(normalize(pixels[i : i + BATCH], spec))[1].numpy() for i in range(0, len(pixels), BATCH)]
    return np.concatenate(parts).astype(np.float32)


def load(arch: str, weights: Path | None):
    """(spec, model, what the weights are): the given or packaged weights, else seeded random ones."""
    from imgsim.models import get_spec, load_model

    spec = get_spec(arch)
    weights = weights or spec.packaged_weights()
    if weights is not None:
        return spec, load_model(spec, weights), f"weights {Path(weights).name}"
    torch.manual_seed(0)
    return spec, spec.build().eval(), "seeded random weights (torch.manual_seed(0)): numerics, not learned features"
