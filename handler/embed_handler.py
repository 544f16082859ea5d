"""TorchServe entry point: adapts TorchServe's lifecycle onto imgsim.pipeline.

Everything model-, image- and response-specific lives in the ``imgsim`` package;
this file only reads TorchServe's context, hands replies back with their status and
reports each batch's figures (``BatchStats``) as the TorchServe metrics config/metrics.yaml declares.

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
from ts.metrics.metric_cache_errors import MetricsCacheKeyError
from ts.metrics.metric_type_enum import MetricTypes

from imgsim.pipeline import Batch, BatchStats, Pipeline, PipelineConfig, Reply, select_device

logger = logging.getLogger(__name__)

# What the handler reports per batch: name, type, unit, dimensions. Each is declared alike in
# config/metrics.yaml's model_metrics, or TorchServe's frontend drops it.
METRICS = {
    "ImagesServed": (MetricTypes.COUNTER, "Count", ("ModelName",)),
    "ImageErrors": (MetricTypes.COUNTER, "Count", ("ModelName", "code")),
    "RequestsPerBatch": (MetricTypes.HISTOGRAM, "Count", ("ModelName",)),
    "ImagesPerBatch": (MetricTypes.HISTOGRAM, "Count", ("ModelName",)),
    "DecodeTime": (MetricTypes.HISTOGRAM, "ms", ("ModelName",)),
    "ModelTime": (MetricTypes.HISTOGRAM, "ms", ("ModelName",)),
    "ResponseTime": (MetricTypes.HISTOGRAM, "ms", ("ModelName",)),
}


class EmbeddingHandler:
    """TorchServe instantiates the one class of this module and calls ``initialize``, then ``handle``."""

    def __init__(self) -> None:
        self.pipeline: Pipeline | None = None
        self.context = None
        self.metrics: dict = {}
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
        self.metrics = declared_metrics(context.metrics)
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
        report(self.metrics, self.context.model_name, data.stats)
        return [reply.body for reply in replies]


def declared_metrics(cache) -> dict:
    """The worker's metric objects for METRICS, as the metrics config declares them."""
    metrics = {}
    for name, (kind, unit, dimensions) in METRICS.items():
        try:
            metric = cache.get_metric(name, kind)
        except MetricsCacheKeyError:
            # still logged, but the frontend publishes it only with model_metrics_auto_detect=true
            logger.warning(
                "metric %s (%s) is not in the metrics config: metrics_config should name config/metrics.yaml",
                name, kind.value,
            )  # fmt: skip
            metric = cache.add_metric_to_cache(name, unit, list(dimensions), kind)
        if sorted(metric.dimension_names) != sorted(dimensions):  # fail at start, not in every batch
            raise ValueError(
                f"the metrics config gives {name} the dimensions {metric.dimension_names}; "
                f"the handler fills {list(dimensions)}"
            )
        metrics[name] = metric
    return metrics


def report(metrics: dict, model_name: str, stats: BatchStats) -> None:
    """One batch's figures: the worker logs them, the frontend publishes them on its metrics address."""

    def add(name: str, value: float, **labels: str) -> None:
        metric, labels["ModelName"] = metrics[name], model_name
        # values in the order the metrics config lists the dimensions
        metric.add_or_update(value, [labels[dimension] for dimension in metric.dimension_names])

    add("ImagesServed", stats.images)
    for code, count in sorted(stats.errors.items()):
        add("ImageErrors", count, code=code)
    add("RequestsPerBatch", stats.requests)
    add("ImagesPerBatch", stats.images)
    add("DecodeTime", round(stats.decode_ms, 3))
    if stats.images:  # a batch of refusals never reaches the model
        add("ModelTime", round(stats.model_ms, 3))
    add("ResponseTime", round(stats.response_ms, 3))
