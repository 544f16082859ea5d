"""The response schema: what one image's result or error looks like on the wire."""

from __future__ import annotations

import json
from typing import TypedDict

import torch

from .decode import DecodeError


class ModelIdentity(TypedDict):
    architecture: str
    weights_sha256: str
    embedding_dim: int
    handler_version: str


class Prediction(TypedDict):
    index: int
    label: str
    probability: float


class ErrorBody(TypedDict):
    code: str
    message: str


class _Named(TypedDict, total=False):
    file: str  # the client's name for the image, when the request gave one


class ImageResult(_Named):
    model: ModelIdentity
    device: str
    embedding: list[float]
    predictions: list[Prediction]


class ImageError(_Named):
    error: ErrorBody


def top_k(probabilities: torch.Tensor, labels: list[str], k: int) -> list[list[Prediction]]:
    """Per row of a (N, classes) softmax, the k most likely classes, most likely first."""
    values, indices = probabilities.topk(min(k, probabilities.shape[1]), dim=1)
    return [
        [
            {"index": int(i), "label": labels[int(i)], "probability": float(p)}
            for p, i in zip(row_values.tolist(), row_indices.tolist())
        ]
        for row_values, row_indices in zip(values, indices)
    ]


def image_result(
    name: str | None, identity: ModelIdentity, device: str, embedding: list[float], predictions: list[Prediction]
) -> ImageResult:
    result: ImageResult = {
        "model": identity, "device": device, "embedding": embedding, "predictions": predictions,
    }  # fmt: skip
    return _named(name, result)


def image_error(name: str | None, error: DecodeError) -> ImageError:
    return _named(name, {"error": {"code": error.code, "message": error.message}})


def _named(name: str | None, body: dict) -> dict:
    return {"file": name, **body} if name is not None else body


def request_status(errors: list[DecodeError | None]) -> int:
    """200 when any image succeeded; otherwise the first image's error status (a 4xx)."""
    if any(e is None for e in errors) or not errors:
        return 200
    return next(e.status for e in errors if e is not None)


def to_json(body: object) -> str:
    # compact: the default indent TorchServe would use doubles the size of a 512-float vector
    return json.dumps(body, separators=(",", ":"))
