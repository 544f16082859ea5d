"""What the model archive carries beside the handler, and the identity every response reports.

``build_mar.sh`` stages these files and the worker loads them; both go through this module,
so the file names and the identity rule exist once. Whatever the build can do, the worker
does not do at start: an engine's exported model (the ONNX file, or OpenVINO's .xml and
.bin) travels in the archive with the sha256 of each file, checked when it is loaded. The
identity names the architecture, the sha256 of the weights and the handler version; a
precision other than fp32 makes different vectors (cosine ~0.99999), so it travels in the
version (``1.0.0+bf16``) and a store never mixes the two. fp32 engines agree to float
rounding (cosine 1.000000) and share the plain version.
"""

from __future__ import annotations

import json
import shutil
from collections.abc import Mapping, Sequence
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
    folder: Path, spec: ModelSpec, weights: Path, weights_sha256: str,
    exported: Mapping[str, Sequence[Path]] | None = None,
) -> Path:  # fmt: skip
    """Lays out the archive's extra files in ``folder``: this package, the weights, identity and labels,
    and ``exported`` (engine name -> its files, the one it loads first: "openvino" -> [.xml, .bin])."""
    shutil.copytree(PACKAGE, folder / PACKAGE.name, ignore=shutil.ignore_patterns("__pycache__"))
    shutil.copyfile(weights, folder / spec.weights_file)
    stored = {"architecture": spec.name, "weights_sha256": weights_sha256, "weights_file": spec.weights_file,
              "exported": {}}  # fmt: skip
    for engine, paths in (exported or {}).items():
        for path in paths:
            shutil.copyfile(path, folder / path.name)
        stored["exported"][engine] = {"file": paths[0].name, "sha256": {p.name: sha256_file(p) for p in paths}}
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
    exported: dict[str, Path] = field(default_factory=dict)  # engine -> the file it loads, hashes checked


def read(model_dir: Path) -> Contents:
    model_dir = Path(model_dir)
    stored = json.loads((model_dir / IDENTITY_FILE).read_text())
    labels = json.loads((model_dir / LABELS_FILE).read_text())
    exported = {}
    for engine, entry in stored.get("exported", {}).items():
        for name, digest in entry["sha256"].items():
            path = model_dir / name
            if not path.is_file() or sha256_file(path) != digest:
                raise ArchiveError(
                    f"{name} in the archive is missing or not the file its build recorded "
                    f"(sha256 {digest[:12]}...); rebuild the archive with build_mar.sh"
                )
        exported[engine] = model_dir / entry["file"]
    spec = get_spec(stored["architecture"])
    return Contents(spec, model_dir / stored["weights_file"], stored["weights_sha256"], labels, exported)
