"""The handler's metrics as an operator sees them: TorchServe's Prometheus endpoint after a known set of requests."""

from __future__ import annotations

import re
import time
from collections import defaultdict

import requests

from devtools import IMAGES
from devtools.images import png_bomb, truncated_jpeg
from tests.conftest import LITE

SAMPLE = re.compile(r"^(?P<name>[A-Za-z_:][\w:]*)(?:\{(?P<labels>.*)\})?\s+(?P<value>\S+)")
LABEL = re.compile(r'(\w+)="((?:[^"\\]|\\.)*)"')


def scrape(server) -> dict[str, dict[frozenset, float]]:
    """``/metrics`` (Prometheus text format, no key) as sample name -> {labels: value}."""
    response = requests.get(f"{server.metrics_url}/metrics", timeout=30)
    response.raise_for_status()
    samples: dict[str, dict[frozenset, float]] = defaultdict(dict)
    for line in response.text.splitlines():
        match = SAMPLE.match(line)
        if match and not line.startswith("#"):
            labels = frozenset(LABEL.findall(match["labels"] or ""))
            samples[match["name"]][labels] = float(match["value"])
    return samples


def total(samples, name: str, **labels: str) -> float:
    """The sum of ``name``'s samples whose labels include ``labels`` (0 when there are none yet)."""
    wanted = set(labels.items())
    return sum(value for key, value in samples.get(name, {}).items() if wanted <= key)


def deltas(before, after, names: dict[str, dict[str, str]]) -> dict[str, float]:
    return {key: total(after, name, **labels) - total(before, name, **labels) for key, (name, labels) in names.items()}


def post(server, **kwargs) -> requests.Response:
    return requests.post(server.predict_url(LITE), headers=server.headers(), timeout=120, **kwargs)


def image(name: str) -> tuple[str, tuple[str, bytes]]:
    return name, (name, (IMAGES / name).read_bytes())


def test_a_known_set_of_requests_shows_up_on_the_metrics_endpoint(server):
    # TorchServe 0.12's Prometheus client names counters as declared, without a _total suffix
    model = {"ModelName": LITE}
    figures = {
        "served": ("ImagesServed", model),
        "corrupt": ("ImageErrors", {**model, "code": "corrupt_image"}),
        "unsupported": ("ImageErrors", {**model, "code": "unsupported_format"}),
        "too_many_pixels": ("ImageErrors", {**model, "code": "too_many_pixels"}),
        "batches": ("RequestsPerBatch_count", model),
        "requests": ("RequestsPerBatch_sum", model),
        "images_batches": ("ImagesPerBatch_count", model),
        "images": ("ImagesPerBatch_sum", model),
        "decode_batches": ("DecodeTime_count", model),
        "decode_ms": ("DecodeTime_sum", model),
        "model_batches": ("ModelTime_count", model),
        "model_ms": ("ModelTime_sum", model),
        "response_ms": ("ResponseTime_sum", model),
    }  # fmt: skip
    before = scrape(server)
    # 4 requests: 5 good images, one corrupt, one not an image, one too large to decode
    broken, note = ("broken.jpg", ("broken.jpg", truncated_jpeg())), ("note", ("note", b"<html>no</html>"))
    statuses = [
        post(server, files=[image("cat.png"), broken, image("coffee.jpg")]).status_code,
        post(server, files=[image("guitar.jpg"), image("temple.jpg"), note]).status_code,
        post(server, data=(IMAGES / "puppy.jpg").read_bytes()).status_code,
        post(server, data=png_bomb()).status_code,
    ]  # fmt: skip
    assert statuses == [200, 200, 200, 413]
    # the frontend reads the worker's metric lines beside its replies: give it a moment to catch up
    deadline = time.monotonic() + 30
    while True:
        after = scrape(server)
        change = deltas(before, after, figures)
        if change["served"] >= 5 and change["requests"] >= 4 or time.monotonic() > deadline:
            break
        time.sleep(0.2)
    assert change["served"] == 5
    assert (change["corrupt"], change["unsupported"], change["too_many_pixels"]) == (1, 1, 1)
    assert change["requests"] == 4 and change["images"] == 5
    assert 1 <= change["batches"] <= 4 and change["images_batches"] == change["batches"]
    assert change["decode_batches"] == change["batches"] and change["decode_ms"] > 0
    assert 1 <= change["model_batches"] <= change["batches"] and change["model_ms"] > 0
    assert change["response_ms"] > 0
    assert total(after, "HandlerTime", **model) > 0  # TorchServe's own figure is still there
    assert total(after, "ts_inference_requests_total", model_name=LITE) > 0  # and the frontend's
