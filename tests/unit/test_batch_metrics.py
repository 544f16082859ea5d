"""What a batch reports: the pipeline's own measurements, the handler's metric lines, and the
metrics config that lets TorchServe publish them. No server."""

from __future__ import annotations

import logging
import re
import time
from pathlib import Path

import pytest
import torch
import yaml
from embed_handler import METRICS, declared_metrics, report
from ts.metrics.metric_cache_yaml_impl import MetricsCacheYamlImpl

from devtools import REPO
from devtools.config import server_settings
from devtools.images import cat_png, coffee_jpeg, png_bomb, truncated_jpeg
from imgsim.models import get_spec, imagenet_labels, load_model, sha256_file
from imgsim.pipeline import BatchStats, Pipeline, PipelineConfig

METRICS_CONFIG = REPO / "config" / "metrics.yaml"
TS_DEFAULT_METRICS = Path(torch.__file__).parent.parent / "ts" / "configs" / "metrics.yaml"


@pytest.fixture(scope="module")
def pipeline() -> Pipeline:
    spec = get_spec("efficientnet_lite0")
    weights = spec.packaged_weights()
    config = PipelineConfig(engine="eager", max_images_per_request=3, decode_threads=2, torch_threads=2)
    model = load_model(spec, weights)
    return Pipeline(spec, model, imagenet_labels(), sha256_file(weights), torch.device("cpu"), config)


def test_a_batch_counts_its_images_and_its_refusals_by_code(pipeline):
    started = time.perf_counter()
    batch = pipeline.prepare([
        {"a.png": cat_png(), "broken.jpg": truncated_jpeg(), "c.jpg": coffee_jpeg()},
        {"body": b"<html>not an image</html>"},
        {"body": cat_png()},
        {"a": cat_png(), "b": cat_png(), "c": cat_png(), "d": cat_png()},  # over max_images_per_request
        {"bomb.png": png_bomb()},
    ])  # fmt: skip
    replies = pipeline.respond(pipeline.infer(batch))
    wall_ms = (time.perf_counter() - started) * 1000
    stats = batch.stats
    assert [reply.status for reply in replies] == [200, 415, 200, 413, 413]
    assert stats.requests == 5 and stats.images == 3
    assert stats.errors == {"corrupt_image": 1, "unsupported_format": 1, "too_many_images": 1, "too_many_pixels": 1}
    assert stats.decode_ms > 0 and stats.model_ms > 0 and stats.response_ms > 0
    assert stats.decode_ms + stats.model_ms + stats.response_ms <= wall_ms  # stages measured, not overlapping


def test_a_batch_of_refusals_never_reaches_the_model(pipeline):
    batch = pipeline.prepare([{"body": b"plain text"}, {"x.jpg": truncated_jpeg()}])
    pipeline.respond(pipeline.infer(batch))
    assert batch.stats.images == 0 and batch.stats.model_ms == 0
    assert batch.stats.errors == {"unsupported_format": 1, "corrupt_image": 1}


def metric_lines(caplog) -> dict[str, list[str]]:
    """``[METRICS]Name.unit:value|#dims|...`` log lines by metric name, as ``value|dims``."""
    found: dict[str, list[str]] = {}
    for record in caplog.records:
        match = re.match(r"\[METRICS\](\w+)\.[^:]*:([\d.]+)\|#([^|]*)\|", record.getMessage())
        if match:
            found.setdefault(match[1], []).append(f"{match[2]}|{match[3]}")
    return found


def test_the_handler_logs_each_figure_with_the_dimensions_the_config_declares(caplog):
    cache = MetricsCacheYamlImpl(config_file_path=str(METRICS_CONFIG))
    cache.initialize_cache()
    stats = BatchStats(requests=3, images=5, decode_ms=12.5, model_ms=40.25, response_ms=1.5)
    stats.errors.update({"corrupt_image": 1, "unsupported_format": 2})
    with caplog.at_level(logging.INFO):
        report(declared_metrics(cache), "lite", stats)
    lines = metric_lines(caplog)
    assert lines["ImagesServed"] == ["5|ModelName:lite"]
    assert sorted(lines["ImageErrors"]) == [
        "1|ModelName:lite,code:corrupt_image", "2|ModelName:lite,code:unsupported_format"
    ]  # fmt: skip
    assert lines["RequestsPerBatch"] == ["3|ModelName:lite"] and lines["ImagesPerBatch"] == ["5|ModelName:lite"]
    assert [lines[name] for name in ("DecodeTime", "ModelTime", "ResponseTime")] == [
        ["12.5|ModelName:lite"], ["40.25|ModelName:lite"], ["1.5|ModelName:lite"]
    ]  # fmt: skip
    assert "WARNING" not in caplog.text


def test_a_metric_missing_from_the_config_is_still_logged_with_a_warning(caplog):
    cache = MetricsCacheYamlImpl(config_file_path=str(TS_DEFAULT_METRICS))  # TorchServe's: none of ours
    cache.initialize_cache()
    with caplog.at_level(logging.INFO):
        report(declared_metrics(cache), "lite", BatchStats(requests=1, images=1))
    assert "ImagesServed (counter) is not in the metrics config" in caplog.text
    assert metric_lines(caplog)["ImagesServed"] == ["1|ModelName:lite"]


def declared(path: Path, section: str) -> dict[str, tuple[str, list[str]]]:
    """name -> (type, dimensions) of one section of a TorchServe metrics config."""
    config = yaml.safe_load(path.read_text())[section]
    return {m["name"]: (kind, m["dimensions"]) for kind, metrics in config.items() for m in metrics}


def test_the_metrics_config_declares_every_metric_the_handler_reports():
    ours = declared(METRICS_CONFIG, "model_metrics")
    for name, (kind, _unit, dimensions) in METRICS.items():
        assert ours[name] == (kind.value, list(dimensions)), name
    assert {"HandlerTime", "PredictionTime"} <= ours.keys()  # TorchServe's own model metrics stay


def test_the_metrics_config_keeps_torchserves_own_metrics_and_the_server_uses_it():
    assert declared(METRICS_CONFIG, "ts_metrics") == declared(TS_DEFAULT_METRICS, "ts_metrics")
    assert REPO / server_settings()["metrics_config"] == METRICS_CONFIG
