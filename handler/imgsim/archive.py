"""What the model archive carries beside the handler, and the identity every response reports.

``build_mar.sh`` stages these files and the worker loads them; both go through this module,
so the file names and the identity rule exist once. Whatever the build can do, the worker
does not do at start: an engine's exported model (the ONNX file) travels in the archive
with its sha256, checked when it is loaded. The identity names the architecture,
the sha256 of the weights and the handler version; a precision other than fp32 makes
different vectors (cosine ~0.99999), so it travels in the version (``1.0.0+bf16``) and a
store never mixes the two.
"""

from __future__ import annotations

import json
import shutil
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

from . import HANDLER_VERSION
from .models import ModelSpec, get_spec, imagenet_labels, sha256_file
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


class ArchiveError(RuntimeError):
    """The archive's files are not what its build recorded; the message says what to do."""


def stage(
    folder: Path, spec: ModelSpec, weights: Path, weights_sha256: str, exported: Mapping[str, Path] | None = None,
) -> Path:  # fmt: skip
    """Lays out the archive's extra files in ``folder``: this package, the weights, identity and labels,
    and ``exported`` (engine name -> the file it loads, e.g. "onnxruntime" -> the ONNX export)."""
    shutil.copytree(PACKAGE, folder / PACKAGE.name, ignore=shutil.ignore_patterns("__pycache__"))
    shutil.copyfile(weights, folder / spec.weights_file)
    stored = {"architecture": spec.name, "weights_sha256": weights_sha256, "weights_file": spec.weights_file,
              "exported": {}}  # fmt: skip
    for engine, path in (exported or {}).items():
        shutil.copyfile(path, folder / path.name)
        stored["exported"][engine] = {"file": path.name, "sha256": sha256_file(path)}
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
    exported: dict[str, Path] = field(default_factory=dict)  # engine -> its file, hash checked


def read(model_dir: Path) -> Contents:
    model_dir = Path(model_dir)
    stored = json.loads((model_dir / IDENTITY_FILE).read_text())
    labels = json.loads((model_dir / LABELS_FILE).read_text())
    exported = {}
    for engine, entry in stored.get("exported", {}).items():
        path = model_dir / entry["file"]
        if not path.is_file() or sha256_file(path) != entry["sha256"]:
            raise ArchiveError(
                f"{entry['file']} in the archive is missing or not the file its build recorded "
                f"(sha256 {entry['sha256'][:12]}...); rebuild the archive with build_mar.sh"
            )
        exported[engine] = path
    spec = get_spec(stored["architecture"])
    return Contents(spec, model_dir / stored["weights_file"], stored["weights_sha256"], labels, exported)
