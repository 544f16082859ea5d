"""What the model archive carries beside the handler, and the identity every response reports.

``build_mar.sh`` stages these files and the worker loads them; both go through this module,
so the file names and the identity rule exist once. The identity names the architecture,
the sha256 of the weights and the handler version; a precision other than fp32 makes
different vectors (cosine ~0.99999), so it travels in the version (``1.0.0+bf16``) and a
store never mixes the two.
"""

from __future__ import annotations

import json
import shutil
from dataclasses import dataclass
from pathlib import Path

from . import HANDLER_VERSION
from .models import ModelSpec, get_spec, imagenet_labels
from .response import ModelIdentity

IDENTITY_FILE = "model_identity.json"
LABELS_FILE = "index_to_name.json"
PACKAGE = Path(__file__).resolve().parent  # this package travels inside the archive too


def handler_version(precision: str) -> str:
    return HANDLER_VERSION if precision == "fp32" else f"{HANDLER_VERSION}+{precision}"


def identity(spec: ModelSpec, weights_sha256: str, precision: str) -> ModelIdentity:
    return {
        "architecture": spec.name,
        "weights_sha256": weights_sha256,
        "embedding_dim": spec.feature_dim,
        "handler_version": handler_version(precision),
    }


def stage(folder: Path, spec: ModelSpec, weights: Path, weights_sha256: str) -> Path:
    """Lays out the archive's extra files in ``folder``: this package, the weights, identity and labels."""
    shutil.copytree(PACKAGE, folder / PACKAGE.name, ignore=shutil.ignore_patterns("__pycache__"))
    shutil.copyfile(weights, folder / spec.weights_file)
    stored = {"architecture": spec.name, "weights_sha256": weights_sha256, "weights_file": spec.weights_file}
    (folder / IDENTITY_FILE).write_text(json.dumps(stored, indent=2))
    (folder / LABELS_FILE).write_text(json.dumps(imagenet_labels()))
    return folder


@dataclass(frozen=True)
class Contents:
    """An unpacked archive's model, as a worker loads it."""

    spec: ModelSpec
    weights: Path
    weights_sha256: str
    labels: list[str]


def read(model_dir: Path) -> Contents:
    model_dir = Path(model_dir)
    stored = json.loads((model_dir / IDENTITY_FILE).read_text())
    labels = json.loads((model_dir / LABELS_FILE).read_text())
    return Contents(get_spec(stored["architecture"]), model_dir / stored["weights_file"], stored["weights_sha256"], labels)
