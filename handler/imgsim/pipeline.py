"""Requests in, replies out: parse, decode, one forward pass per batch, respond.

Nothing here knows TorchServe: a request is a mapping of part name to value and a
reply is a status and a JSON text, so another server can drive the same pipeline.
"""

from __future__ import annotations

import logging
import os
import time
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any, Mapping, Sequence

import torch

from . import archive
from .decode import DEFAULT_MAX_PIXELS, DecodeError, decode_image
from .engines import make_engine, supported
from .models import EmbeddingNet, ModelSpec, load_model
from .payload import ParsedRequest, parse_request
from .preprocess import crop_uint8, normalize
from .response import ModelIdentity, image_error, image_result, request_status, to_json, top_k

logger = logging.getLogger(__name__)
WARM_UP_BATCH = 4


@dataclass(frozen=True)
class PipelineConfig:
    """The ``handler:`` section of the model config YAML; see config/model-config.yaml.

    These defaults apply to settings the YAML leaves out; a test checks that they equal
    config/model-config.yaml's, so the two cannot drift apart.
    """

    top_k: int = 5
    max_image_pixels: int = DEFAULT_MAX_PIXELS
    max_images_per_request: int = 64
    fast_jpeg_decode: bool = True
    torch_threads: int = 0  # 0: one per core
    decode_threads: int = 0  # 0: one per core
    engine: str = "auto"  # auto: the architecture's measured default (ModelSpec.engine); CUDA runs eager
    precision: str = "auto"  # auto: the architecture's default where the engine runs it, else fp32

    @classmethod
    def from_mapping(cls, values: Mapping[str, Any]) -> "PipelineConfig":
        known = {f.name: f.type for f in fields(cls)}
        unknown = sorted(set(values) - set(known))
        if unknown:
            raise ValueError(f"unknown handler settings {unknown}; known: {sorted(known)}")
        casts = {"fast_jpeg_decode": bool, "engine": str, "precision": str}
        return cls(**{k: casts.get(k, int)(v) for k, v in values.items()})


@dataclass(frozen=True)
class Reply:
    status: int
    body: str  # JSON text


@dataclass
class BatchStats:
    """What one batch carried and where its time went, as plain numbers a server reports its own way."""

    requests: int = 0
    images: int = 0  # images that reached the model (each gets an embedding)
    # refusals by error code: one per refused image, one per request refused whole (too_many_images)
    errors: Counter[str] = field(default_factory=Counter)
    decode_ms: float = 0.0  # parsing the bodies, decoding and cropping the images
    model_ms: float = 0.0  # normalising the batch and the forward pass
    response_ms: float = 0.0  # top-k labels, embeddings to lists, JSON


@dataclass
class Batch:
    """All images of all requests of one server batch, flattened into one tensor."""

    requests: list[ParsedRequest]
    # per request, per image: the row of ``pixels`` holding it, or why it has none
    rows: list[list[int | DecodeError]] = field(default_factory=list)
    pixels: torch.Tensor | None = None
    logits: torch.Tensor | None = None
    features: torch.Tensor | None = None
    stats: BatchStats = field(default_factory=BatchStats)


def engine_choice(config: PipelineConfig, spec: ModelSpec, device: torch.device) -> tuple[str, str]:
    """(engine, precision) that run ``spec`` on ``device``: the configured ones, with ``auto``
    resolved from the registry's measured default; CUDA always runs eager."""
    kind = "eager" if device.type != "cpu" else spec.engine if config.engine == "auto" else config.engine
    if config.precision != "auto":
        return kind, config.precision
    default = spec.precision if kind == spec.engine else "fp32"
    return kind, default if supported(kind, device, default) else "fp32"


def select_device(gpu_id: int | None) -> torch.device:
    if gpu_id is not None and torch.cuda.is_available():
        return torch.device(f"cuda:{gpu_id}")
    return torch.device("cpu")


class Pipeline:
    def __init__(
        self, spec: ModelSpec, model: EmbeddingNet | None, labels: list[str], weights_sha256: str,
        device: torch.device, config: PipelineConfig, exported: Path | None = None,
    ):  # fmt: skip
        """``model`` may be None when ``exported`` is the engine's own file (an archive's export)."""
        self.spec, self.labels, self.device, self.config = spec, labels, device, config
        self.loaded_from = f"the exported {exported.name}" if exported else "the weights"
        kind, precision = engine_choice(config, spec, device)
        self.engine = make_engine(kind, model, spec, device, precision, exported=exported)
        # what the engine really runs names the vectors (bf16 falls back to fp32 on CPUs without it)
        self.identity: ModelIdentity = archive.identity(spec, weights_sha256, self.engine.precision)
        self._decoders = ThreadPoolExecutor(config.decode_threads or os.cpu_count() or 1, "imgsim-decode")
        # a warm-up batch as small as a request's; the engines' own first call already ran.
        # A full-size one (64 images) cost ResNet18 a second of every worker start.
        side = spec.input_size
        self.engine(torch.zeros(WARM_UP_BATCH, 3, side, side))

    @classmethod
    def from_archive(cls, model_dir: Path, device: torch.device, config: PipelineConfig) -> "Pipeline":
        """Loads what build_mar.sh put in the archive: identity, labels, and the engine's exported
        model where the build made one (then the torch weights are not even read), else the weights."""
        contents = archive.read(model_dir)
        exported = contents.exported.get(engine_choice(config, contents.spec, device)[0])
        model = None if exported else load_model(contents.spec, contents.weights, device)
        return cls(contents.spec, model, contents.labels, contents.weights_sha256, device, config, exported)

    def __call__(self, requests: Sequence[Mapping[str, Any]]) -> list[Reply]:
        return self.respond(self.infer(self.prepare(requests)))

    def prepare(self, requests: Sequence[Mapping[str, Any]]) -> Batch:
        started = time.perf_counter()
        batch = Batch([parse_request(parts, self.config.max_images_per_request) for parts in requests])
        stats = batch.stats
        stats.requests = len(batch.requests)
        stats.errors.update(request.error.code for request in batch.requests if request.error is not None)
        images = [image for request in batch.requests for image in request.images if image.error is None]
        # PIL releases the GIL while it decodes and resizes, so threads use every core
        outcomes = iter(list(self._decoders.map(self._crop_or_error, [image.data for image in images])))
        crops: list[torch.Tensor] = []
        for request in batch.requests:
            slots: list[int | DecodeError] = []
            for image in request.images:
                outcome = image.error or next(outcomes)
                if isinstance(outcome, DecodeError):
                    logger.info("image %r refused: %s", image.name, outcome)
                    stats.errors[outcome.code] += 1
                    slots.append(outcome)
                else:
                    crops.append(outcome)
                    slots.append(len(crops) - 1)
            batch.rows.append(slots)
        if crops:
            batch.pixels = torch.stack(crops)
        stats.images = len(crops)
        stats.decode_ms = _ms_since(started)
        return batch

    def _crop_or_error(self, data: bytes) -> torch.Tensor | DecodeError:
        try:
            return self._crop(data)
        except DecodeError as error:
            return error

    def _crop(self, data: bytes) -> torch.Tensor:
        draft = self.spec.resize_size if self.config.fast_jpeg_decode else None
        image = decode_image(data, self.config.max_image_pixels, draft_side=draft)
        return crop_uint8(image, self.spec)

    @torch.inference_mode()
    def infer(self, batch: Batch) -> Batch:
        if batch.pixels is None:
            return batch
        started = time.perf_counter()
        batch.logits, batch.features = self.engine(normalize(batch.pixels, self.spec))
        batch.stats.model_ms = _ms_since(started)
        return batch

    def respond(self, batch: Batch) -> list[Reply]:
        started = time.perf_counter()
        predictions, embeddings = [], []
        if batch.logits is not None:
            predictions = top_k(batch.logits.softmax(dim=1), self.labels, self.config.top_k)
            embeddings = batch.features.tolist()
        replies = []
        for request, slots in zip(batch.requests, batch.rows or [[] for _ in batch.requests]):
            if request.error is not None:
                body = {"error": {"code": request.error.code, "message": request.error.message}}
                replies.append(Reply(request.error.status, to_json(body)))
                continue
            items = [
                image_error(image.name, slot)
                if isinstance(slot, DecodeError)
                else image_result(image.name, self.identity, str(self.device), embeddings[slot], predictions[slot])
                for image, slot in zip(request.images, slots)
            ]
            errors = [slot if isinstance(slot, DecodeError) else None for slot in slots]
            replies.append(Reply(request_status(errors), to_json(items[0] if request.single else items)))
        batch.stats.response_ms = _ms_since(started)
        return replies


def _ms_since(started: float) -> float:
    return (time.perf_counter() - started) * 1000
