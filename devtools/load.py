"""A bounded load on loopback: concurrent clients sending a mix of single- and multi-image requests.

``run_load`` is what bench/load_test.py reports (docs/LOAD.md) and what tests/ runs
against a server of its own. Each client sends one request after another for
``duration`` seconds, after a ``warmup`` of the same traffic that is not counted. The
mix, drawn from a seed: a raw single photo (50%), a multipart request of 2-8 photos
(35%), and 2-6 photos beside one bad image (15%: empty, truncated JPEG, text, a
decompression bomb), whose per-image error is expected. Anything else is an unexpected
error. The resident memory of the model workers is sampled after the warm-up and every
few seconds until the end. Every address is checked to be loopback.
"""

from __future__ import annotations

import ipaddress
import random
import socket
import statistics
import threading
import time
from collections import Counter
from dataclasses import dataclass, field
from typing import Callable
from urllib.parse import urlsplit

import requests

from devtools.images import png_bomb, repo_photos, text_as_jpeg, truncated_jpeg
from devtools.machine import machine
from devtools.processes import rss, worker_pids_serving

MAX_DURATION_S, MAX_CLIENTS = 600, 64
RSS_EVERY_S = 5.0
# Images per request in the warm-up's sweep: down from the most one forward pass can hold
# (max_images_per_request 64, and batchSize 8 x 8 photos in the mix below).
SWEEP = tuple(range(64, 0, -4))


@dataclass(frozen=True)
class Payload:
    kind: str  # "single", "multi" or "multi+bad"
    data: bytes | None
    files: list[tuple[str, tuple[str, bytes]]] | None
    expected: list[str]  # per image: "result" or the error code it must get
    images: int


@dataclass
class Sample:
    kind: str
    seconds: float
    images: int
    problem: str | None  # None: as expected


@dataclass
class LoadResult:
    clients: int
    duration_s: float
    warmup_s: float
    requests: int
    images: int
    requests_per_s: float
    images_per_s: float
    latency_ms: dict[str, dict[str, float]]  # kind (and "all") -> p50, p90, p99, max, count
    expected_image_errors: int
    unexpected: int
    unexpected_examples: list[str]
    rss_mb_after_warmup: float
    rss_mb_end: float
    rss_growth: float  # end / after warm-up - 1
    rss_mb_samples: list[float]
    worker_pids_start: list[int]
    worker_pids_end: list[int]
    machine: str = field(default_factory=lambda: machine().short())


def bad_images() -> dict[str, tuple[bytes, str]]:
    """The bad images of the mix, each with the error code the server documents for it (docs/BAD_INPUT.md)."""
    return {
        "empty.jpg": (b"", "empty"),
        "half.jpg": (truncated_jpeg(), "corrupt_image"),
        "notes.jpg": (text_as_jpeg(), "unsupported_format"),
        "bomb.png": (png_bomb(), "too_many_pixels"),
    }


def payloads(seed: int, count: int = 400) -> list[Payload]:
    """A fixed deck of requests, drawn from ``seed``; clients deal from it in turn."""
    rng = random.Random(seed)
    photos = [(p.name, p.read_bytes()) for p in repo_photos()]
    bad = list(bad_images().items())
    deck = []
    for _ in range(count):
        roll = rng.random()
        if roll < 0.50:
            name, data = rng.choice(photos)
            deck.append(Payload("single", data, None, ["result"], 1))
            continue
        chosen = rng.sample(photos, rng.randint(2, 8) if roll < 0.85 else rng.randint(2, 6))
        files = [(f"{i}-{name}", (name, data)) for i, (name, data) in enumerate(chosen)]
        expected = ["result"] * len(files)
        kind = "multi"
        if roll >= 0.85:
            name, (data, code) = rng.choice(bad)
            at = rng.randint(0, len(files))
            files.insert(at, (f"bad-{name}", (name, data)))
            expected.insert(at, code)
            kind = "multi+bad"
        deck.append(Payload(kind, None, files, expected, len(files)))
    return deck


def check(payload: Payload, response: requests.Response) -> str | None:
    """None when the answer is exactly what the API documents for this payload, else what is wrong."""
    if response.status_code != 200:
        return f"{payload.kind}: status {response.status_code}: {response.text[:200]}"
    body = response.json()
    items = [body] if payload.kind == "single" else body
    if not isinstance(items, list) or len(items) != len(payload.expected):
        return f"{payload.kind}: {len(items) if isinstance(items, list) else 'no'} items for {len(payload.expected)} images"
    for item, want in zip(items, payload.expected):
        got = item["error"]["code"] if "error" in item else ("result" if item.get("embedding") else "no embedding")
        if got != want:
            return f"{payload.kind}: {got} where {want} was expected"
    return None


def assert_loopback(url: str) -> None:
    host = urlsplit(url).hostname or ""
    addresses = {info[4][0] for info in socket.getaddrinfo(host, None)}
    if not addresses or not all(ipaddress.ip_address(a.split("%")[0]).is_loopback for a in addresses):
        raise SystemExit(f"load_test.py: {url} is not a loopback address; this script only loads 127.0.0.1")


def percentiles(seconds: list[float]) -> dict[str, float]:
    if not seconds:
        return {"count": 0}
    ms = sorted(s * 1000 for s in seconds)
    cuts = statistics.quantiles(ms, n=100, method="inclusive") if len(ms) > 1 else [ms[0]] * 99
    return {"count": len(ms), "p50": cuts[49], "p90": cuts[89], "p99": cuts[98], "max": ms[-1]}


def presize(endpoint: str, headers: dict[str, str]) -> None:
    """Sends one request of each size in SWEEP, one at a time, so each is a batch of its own.

    ONNX Runtime's memory arena grows in steps the first times it meets large batches of
    new sizes, then stays (measured in-process: flat over 200 further random batches after
    this sweep). Taking the baseline RSS after the sweep makes the end-to-warm-up ratio
    measure growth that keeps going, a leak, rather than the arena filling up once.
    """
    photos = [(p.name, p.read_bytes()) for p in repo_photos()]
    with requests.Session() as session:
        for size in SWEEP:
            files = [(f"{i}-{photos[i % len(photos)][0]}", photos[i % len(photos)]) for i in range(size)]
            response = session.post(endpoint, files=files, headers=headers, timeout=300)
            if response.status_code != 200:
                raise SystemExit(f"load_test.py: the warm-up request of {size} images got {response.status_code}")


def run_load(
    url: str, model: str, token: str, *, clients: int = 8, duration: float = 60, warmup: float = 15,
    seed: int = 0, worker_pids: Callable[[], list[int]] | None = None, log: Callable[[str], None] = print,
) -> LoadResult:  # fmt: skip
    assert_loopback(url)
    if not (0 < duration <= MAX_DURATION_S and 0 < clients <= MAX_CLIENTS and 0 <= warmup <= MAX_DURATION_S):
        raise SystemExit(f"load_test.py: keep 0 < duration <= {MAX_DURATION_S} s and 0 < clients <= {MAX_CLIENTS}")
    pids = worker_pids or (lambda: worker_pids_serving(url))
    deck = payloads(seed)
    endpoint = f"{url.rstrip('/')}/predictions/{model}"
    headers = {"Authorization": f"Bearer {token}"}
    samples: list[Sample] = []
    lock = threading.Lock()
    measuring = threading.Event()
    stop = threading.Event()

    def client(number: int) -> None:
        session = requests.Session()
        turn = number
        while not stop.is_set():
            payload = deck[turn % len(deck)]
            turn += clients
            started = time.perf_counter()
            try:
                response = session.post(endpoint, data=payload.data, files=payload.files, headers=headers, timeout=120)
                problem = check(payload, response)
            except (requests.RequestException, ValueError) as exc:
                problem = f"{payload.kind}: {type(exc).__name__}: {exc}"[:300]
            elapsed = time.perf_counter() - started
            if measuring.is_set() and not stop.is_set():
                with lock:
                    samples.append(Sample(payload.kind, elapsed, payload.images, problem))

    if warmup:
        log(f"warming up: one request each of {', '.join(map(str, SWEEP))} images, alone")
        presize(endpoint, headers)
    threads = [threading.Thread(target=client, args=(n,), daemon=True) for n in range(clients)]
    for thread in threads:
        thread.start()
    log(f"warming up for {warmup:.0f} s with {clients} clients")
    time.sleep(warmup)
    start_pids = pids()
    rss_samples = [rss(start_pids) / 2**20]
    measuring.set()
    started = time.monotonic()
    log(f"measuring for {duration:.0f} s; worker RSS after warm-up {rss_samples[0]:.0f} MB")
    while (left := duration - (time.monotonic() - started)) > 0:
        time.sleep(min(RSS_EVERY_S, left))
        rss_samples.append(rss(start_pids) / 2**20)
    stop.set()
    elapsed = time.monotonic() - started
    for thread in threads:
        thread.join(timeout=150)
    end_pids = pids()

    problems = [s.problem for s in samples if s.problem]
    expected_errors = sum(1 for s in samples if s.kind == "multi+bad" and not s.problem)
    latency = {"all": percentiles([s.seconds for s in samples])}
    for kind in ("single", "multi", "multi+bad"):
        latency[kind] = percentiles([s.seconds for s in samples if s.kind == kind])
    images = sum(s.images for s in samples)
    return LoadResult(
        clients=clients, duration_s=round(elapsed, 1), warmup_s=warmup, requests=len(samples), images=images,
        requests_per_s=round(len(samples) / elapsed, 2), images_per_s=round(images / elapsed, 2),
        latency_ms={k: {m: round(v, 1) for m, v in d.items()} for k, d in latency.items()},
        expected_image_errors=expected_errors, unexpected=len(problems),
        unexpected_examples=[f"{n} x {p}" for p, n in Counter(problems).most_common(5)],
        rss_mb_after_warmup=round(rss_samples[0], 1), rss_mb_end=round(rss_samples[-1], 1),
        rss_growth=round(rss_samples[-1] / rss_samples[0] - 1, 4) if rss_samples[0] else float("nan"),
        rss_mb_samples=[round(r, 1) for r in rss_samples], worker_pids_start=start_pids, worker_pids_end=end_pids,
    )  # fmt: skip
