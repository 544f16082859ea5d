"""Weights files for the archives the tests and benchmarks build."""

from __future__ import annotations

from pathlib import Path


def random_resnet18_weights(path: Path) -> Path:
    """A ResNet18 state dict laid out like the published file, random but reproducible (seed 0).

    The published weights need a download this machine may not have; speed and the
    server's behaviour do not depend on the values.
    """
    import torch
    import torchvision

    torch.manual_seed(0)
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save(torchvision.models.resnet18(weights=None).state_dict(), path)
    return path
