"""The gates of bench/precision_gates.py compute what they say, and the registry's defaults pass them.

The defaults are read from the registry at test time (handler/imgsim/models.py), so a change
of an architecture's engine or precision is checked here before it ships: embedding cosine
vs eager fp32 on noisy camera photos for each architecture, and precision@10 on labelled
clip-art for EfficientNet-Lite0 (ResNet18 runs seeded random weights here, whose
neighbours mean nothing). docs/ENGINES.md has the full-size run.
"""

from __future__ import annotations

import copy

import numpy as np
import pytest
import torch

from devtools.gates import (
    COSINE_MEDIAN,
    COSINE_MIN,
    OPENCLIPART,
    REFERENCE,
    cosine_gate,
    crops,
    features,
    gate_failures,
    gates_pass,
    labelled_set,
    load,
    noisy_photos,
    precision_at_k,
)
from imgsim.engines import make_engine
from imgsim.models import REGISTRY
from imgsim.pipeline import PipelineConfig, engine_choice

ARCHS = ("resnet18", "efficientnet_lite0")
PHOTOS = 16
CLIP_CLASSES = ("animals/birds", "food/fruit", "recreation/music", "transportation/vehicles")
CLIP_PER_CLASS = 12


def _on_circle(degrees: list[float], norms: list[float]) -> np.ndarray:
    radians = np.radians(degrees)
    return np.stack([np.cos(radians), np.sin(radians)], axis=1) * np.asarray(norms)[:, None]


def test_precision_at_k_counts_same_class_neighbours_by_cosine_leaving_out_the_image_itself():
    # A at 0, 10, 20 degrees; B at 30 (among the A's, and 5x longer: cosine ignores length), 90, 100.
    # k=2: A0 1, A10 1, A20 1/2 (A10 and B30), B30 0, B90 1, B100 1 -> 4.5 / 6
    vectors = _on_circle([0, 10, 20, 30, 90, 100], [1, 1, 1, 5, 1, 1])
    labels = ["A", "A", "A", "B", "B", "B"]
    assert precision_at_k(vectors, labels, k=2) == pytest.approx(0.75)
    # alternating labels: 0 1/2, 10 0, 20 0, 30 1/2 (20 and 10), 90 0 (100 and 30), 100 1/2 -> 1.5 / 6
    assert precision_at_k(vectors, ["A", "B", "A", "B", "A", "B"], k=2) == pytest.approx(0.25)


def test_precision_at_k_needs_more_vectors_than_k():
    with pytest.raises(ValueError, match="more than 10"):
        precision_at_k(np.eye(10), list(range(10)))


def test_gates_accept_identical_vectors_and_reject_noisy_ones():
    rng = np.random.default_rng(0)
    reference = rng.gamma(0.6, 1.0, size=(64, 512)).astype(np.float32)  # non-negative, like pooled features
    same = cosine_gate(reference, reference.copy())
    assert same["pass"] and same["median"] == pytest.approx(1.0) and same["min"] == pytest.approx(1.0)
    assert gates_pass(same, (0.8, 0.8), (0.9, 0.9))

    noisy = reference + rng.normal(0, 0.1 * reference.std(), size=reference.shape).astype(np.float32)
    cosine = cosine_gate(reference, noisy)
    assert not cosine["pass"] and cosine["min"] < COSINE_MIN, cosine
    assert any("cosine" in failure for failure in gate_failures(cosine, None, None))


def test_retrieval_and_dedup_gates_allow_only_their_tolerance_of_loss():
    exact = {"median": 1.0, "min": 1.0}
    assert gates_pass(exact, (0.700, 0.696), None)  # 0.004 lower: within 0.005
    assert gates_pass(exact, (0.700, 0.750), None)  # higher is never a failure
    assert gate_failures(exact, (0.700, 0.690), None) == ["p@10 0.690 < 0.700 - 0.005"]
    assert gates_pass(exact, None, (0.950, 0.949))  # 0.001 lower: within 0.002
    assert not gates_pass(exact, None, (0.950, 0.945))
    assert not gates_pass({"median": 0.99989, "min": 0.9995}, None, None)  # the median gate alone


@pytest.fixture(scope="module")
def camera_crops() -> torch.Tensor:
    # Both architectures resize to 256 and crop 224, so one decode serves both; checked here.
    assert len({(REGISTRY[a].resize_size, REGISTRY[a].input_size) for a in ARCHS}) == 1
    return crops(noisy_photos(PHOTOS), REGISTRY[ARCHS[0]])


def _default_and_reference(arch: str):
    spec, model, _ = load(arch, None)
    kind, precision = engine_choice(PipelineConfig(), spec, torch.device("cpu"))
    reference = make_engine(REFERENCE[0], copy.deepcopy(model), spec, "cpu", REFERENCE[1])
    return spec, reference, make_engine(kind, model, spec, "cpu", precision), f"{kind}/{precision}"


@pytest.mark.parametrize("arch", ARCHS)
def test_registry_default_engine_passes_the_cosine_gate_on_noisy_camera_photos(arch, camera_crops):
    spec, reference, default, label = _default_and_reference(arch)
    gate = cosine_gate(features(reference, camera_crops, spec), features(default, camera_crops, spec))
    assert gate["pass"], (
        f"{arch}'s registry default {label} (ran {default.precision}) vs eager fp32 over {PHOTOS} noisy photos: "
        f"cosine median {gate['median']:.6f} (gate >= {COSINE_MEDIAN}), min {gate['min']:.5f} (gate >= {COSINE_MIN}); "
        "choose another default in handler/imgsim/models.py (bench/precision_gates.py has the full gates)"
    )


def test_registry_default_engine_keeps_efficientnet_lite0_precision_at_10_on_labelled_clip_art():
    if not OPENCLIPART.is_dir():
        pytest.fail(f"{OPENCLIPART} is missing: the labelled clip-art is Debian openclipart-png; `make setup` installs it")
    files, labels = labelled_set(CLIP_PER_CLASS, CLIP_CLASSES)
    assert len(files) == len(CLIP_CLASSES) * CLIP_PER_CLASS
    spec, reference, default, label = _default_and_reference("efficientnet_lite0")
    pixels = crops(files, spec)
    fp32, candidate = (precision_at_k(features(e, pixels, spec), labels) for e in (reference, default))
    assert fp32 > 1.5 / len(CLIP_CLASSES), f"eager fp32 p@10 {fp32:.3f} is near chance: the clip-art set is wrong"
    failures = gate_failures({"median": 1.0, "min": 1.0}, (fp32, candidate), None)
    assert not failures, f"efficientnet_lite0's registry default {label}: {failures}"
