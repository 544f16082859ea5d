"""TorchServe entry point: adapts TorchServe's lifecycle onto imgsim.pipeline.

Everything model-, image- and response-specific lives in the ``imgsim`` package;
this file only reads TorchServe's context and hands replies back with their status.

It keeps TorchServe's lifecycle (initialize, preprocess, inference, postprocess) without
subclassing its BaseHandler: importing that module also imports ``openvino.torch`` and
torch._dynamo whenever OpenVINO is installed, about 1.5 s of every worker start
(``python -X importtime``), for torch.compile back ends this handler never uses.
"""

from __future__ import annotations

import logging
import os
import time

import torch

from imgsim.pipeline import Batch, Pipeline, PipelineConfig, Reply, select_device

logger = logging.getLogger(__name__)


class EmbeddingHandler:
    """TorchServe instantiates the one class of this module and calls ``initialize``, then ``handle``."""

    def __init__(self) -> None:
        self.pipeline: Pipeline | None = None
        self.context = None
        self.initialized = False

    def initialize(self, context) -> None:
        properties = context.system_properties
        yaml_config = context.model_yaml_config or {}
        config = PipelineConfig.from_mapping(yaml_config.get("handler", {}) or {})
        threads = config.torch_threads or os.cpu_count() or 1
        torch.set_num_threads(threads)
        device = select_device(properties.get("gpu_id"))
        started = time.perf_counter()
        self.pipeline = Pipeline.from_archive(properties["model_dir"], device, config)
        identity, engine = self.pipeline.identity, self.pipeline.engine
        logger.info(
            "imgsim ready: %s weights %s, %s %s from %s on %s, %d threads, batch size %s, in %.2f s",
            identity["architecture"], identity["weights_sha256"][:12], engine.name, engine.precision,
            self.pipeline.loaded_from, device, threads, properties.get("batch_size"), time.perf_counter() - started,
        )  # fmt: skip
        self.context = context
        self.initialized = True

    def handle(self, data: list[dict], context) -> list[str]:
        # Unlike BaseHandler.handle, no client header ("explain", "describe") reroutes a request.
        self.context = context
        start = time.time()
        output = self.postprocess(self.inference(self.preprocess(data)))
        context.metrics.add_time("HandlerTime", round((time.time() - start) * 1000, 2), None, "ms")
        return output

    def preprocess(self, data: list[dict]) -> Batch:
        return self.pipeline.prepare(data)

    def inference(self, data: Batch, *args, **kwargs) -> Batch:
        return self.pipeline.infer(data)

    def postprocess(self, data: Batch) -> list[str]:
        replies: list[Reply] = self.pipeline.respond(data)
        for idx, reply in enumerate(replies):
            self.context.set_response_status(reply.status, "", idx)
            self.context.set_response_content_type(idx, "application/json")
        logger.info("batch of %d requests, %d images", len(replies), 0 if data.pixels is None else len(data.pixels))
        return [reply.body for reply in replies]
