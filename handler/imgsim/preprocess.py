"""Decoded image to model input, exactly as each architecture's reference transform.

The reference (torchvision ``Resize(s)`` + ``CenterCrop(c)`` on a PIL image) resizes
the short side with PIL's bilinear filter, then crops the centre. Normalisation runs
once per batch on the stacked uint8 tensor, which is cheaper than per image.
"""

from __future__ import annotations

import numpy as np
import torch
from PIL import Image

from .models import ModelSpec


def crop_uint8(image: Image.Image, spec: ModelSpec) -> torch.Tensor:
    """RGB image -> uint8 tensor (3, input_size, input_size)."""
    width, height = image.size
    short, long = (width, height) if width <= height else (height, width)
    new_short, new_long = spec.resize_size, int(spec.resize_size * long / short)
    size = (new_short, new_long) if width <= height else (new_long, new_short)
    crop = spec.input_size
    left = int(round((size[0] - crop) / 2.0))
    top = int(round((size[1] - crop) / 2.0))
    if size[0] * size[1] > 64 * spec.resize_size**2:
        # extreme aspect ratio (a 1x60000 strip would resize to gigabytes): resize only
        # the source box under the crop, on the same sampling grid
        sx, sy = width / size[0], height / size[1]
        box = (left * sx, top * sy, (left + crop) * sx, (top + crop) * sy)
        image = image.resize((crop, crop), Image.BILINEAR, box=box)
    else:
        if size != image.size:
            image = image.resize(size, Image.BILINEAR)
        image = image.crop((left, top, left + crop, top + crop))
    return torch.from_numpy(np.asarray(image, dtype=np.uint8).copy()).permute(2, 0, 1)


def normalize(batch: torch.Tensor, spec: ModelSpec) -> torch.Tensor:
    """uint8 (N, 3, H, W) -> float32 normalised with the architecture's mean and std."""
    mean = torch.tensor(spec.mean, dtype=torch.float32).view(1, 3, 1, 1) * 255.0
    std = torch.tensor(spec.std, dtype=torch.float32).view(1, 3, 1, 1) * 255.0
    return (batch.float() - mean) / std
