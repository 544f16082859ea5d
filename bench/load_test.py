"""A bounded load test on loopback: concurrent clients sending a mix of single- and multi-image requests.

    .venv/bin/python bench/load_test.py --start --build --markdown docs/LOAD.md   # ~2 minutes: docs/LOAD.md
    .venv/bin/python bench/load_test.py --url http://127.0.0.1:8080 --model resnet18-embed --token-file key_file.json

Each client sends one request after another for --duration seconds, after a --warmup
of the same traffic that is not counted. The mix, drawn from a seed: a raw single photo
(50%), a multipart request of 2-8 photos (35%), and 2-6 photos beside one bad image
(15%: empty, truncated JPEG, text, a decompression bomb), whose per-image error is
expected. Anything else is an unexpected error: a status other than the documented
one, a connection error, a photo without its embedding, a bad image without its code.

Worker memory: the resident set (RSS) of the model worker processes of the server is
sampled after the warm-up and every few seconds until the end. The warm-up opens with
one request each of 64, 60, ..., 4 images, alone, so that ONNX Runtime's memory arena,
which grows in steps the first times it meets large batches, is full before the baseline. Every address is checked
to be loopback: this script never sends traffic anywhere else.
"""

from __future__ import annotations

import argparse
import ipaddress
import json
import os
import platform
import random
import shutil
import socket
import statistics
import sys
import tempfile
import threading
import time
from collections import Counter
from dataclasses import asdict, dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Callable
from urllib.parse import urlsplit

REPO = Path(__file__).resolve().parent.parent
sys.path[:0] = [str(REPO), str(REPO / "handler")]

import psutil  # noqa: E402
import requests  # noqa: E402

from tests.images import encode, photo, png_bomb  # noqa: E402

PHOTOS = sorted(p for p in (REPO / "images").iterdir() if p.suffix in (".jpg", ".png"))
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
    machine: str = field(default_factory=lambda: f"{platform.machine()}, {os.cpu_count()} cores, {platform.python_version()}")


def bad_images() -> dict[str, tuple[bytes, str]]:
    jpeg = encode(photo("coffee.jpg"), "JPEG")
    return {
        "empty.jpg": (b"", "empty"),
        "half.jpg": (jpeg[: len(jpeg) // 2], "corrupt_image"),
        "notes.jpg": (b"not an image\n" * 40, "unsupported_format"),
        "bomb.png": (png_bomb(), "too_many_pixels"),
    }


def payloads(seed: int, count: int = 400) -> list[Payload]:
    """A fixed deck of requests, drawn from ``seed``; clients deal from it in turn."""
    rng = random.Random(seed)
    photos = [(p.name, p.read_bytes()) for p in PHOTOS]
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


def worker_pids_for(url: str) -> list[int]:
    """The model worker processes of the TorchServe whose inference address is ``url``."""
    port = urlsplit(url).port
    listeners = [c.pid for c in psutil.net_connections("tcp") if c.status == psutil.CONN_LISTEN and c.laddr.port == port]
    if not listeners or listeners[0] is None:
        return []
    children = psutil.Process(listeners[0]).children(recursive=True)
    return sorted(p.pid for p in children if any("model_service_worker.py" in part for part in p.cmdline()))


def rss_mb(pids: list[int]) -> float:
    total = 0
    for pid in pids:
        try:
            total += psutil.Process(pid).memory_info().rss
        except psutil.NoSuchProcess:
            pass
    return total / 2**20


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
    photos = [(p.name, p.read_bytes()) for p in PHOTOS]
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
    pids = worker_pids or (lambda: worker_pids_for(url))
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
    rss_samples = [rss_mb(start_pids)]
    measuring.set()
    started = time.monotonic()
    log(f"measuring for {duration:.0f} s; worker RSS after warm-up {rss_samples[0]:.0f} MB")
    while (left := duration - (time.monotonic() - started)) > 0:
        time.sleep(min(RSS_EVERY_S, left))
        rss_samples.append(rss_mb(start_pids))
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


def markdown(result: LoadResult, model: str, command: str) -> str:
    rows = [
        f"| {kind} | {d['count']} | {d.get('p50', 0):.0f} | {d.get('p90', 0):.0f} | {d.get('p99', 0):.0f} | {d.get('max', 0):.0f} |"
        for kind, d in result.latency_ms.items()
    ]  # fmt: skip
    now = datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    return "\n".join([
        "# Load: concurrent clients against one TorchServe on loopback",
        "",
        f"Measured {now} by `{command}`",
        f"({result.machine}, no GPU; the load generator shares the cores with the server, and other jobs may",
        "have run at the same time). Every figure below comes from that one run; rerun the command to check.",
        "",
        f"- Model `{model}`, one worker (config/model-config.yaml), {result.clients} clients on 127.0.0.1, "
        f"{result.duration_s:.0f} s measured after a {result.warmup_s:.0f} s warm-up.",
        "- Mix: 50% a raw single photo, 35% multipart with 2-8 photos, 15% multipart with 2-6 photos beside one "
        "bad image (empty, truncated, text or a decompression bomb) whose per-image error is expected. "
        "The photos are those in `images/` (up to 1024 px on the long side).",
        "- The warm-up opens with one request each of 64, 60, ..., 4 images, sent alone (each is a batch of its "
        "own): ONNX Runtime's memory arena grows in steps the first times it meets large batches of new sizes, then "
        "stays. Without that sweep worker RSS steps up once by about 300 MB some seconds into the load and then "
        "stays flat, which would read as growth; after it, only memory that keeps growing shows.",
        "",
        "| measure | value |",
        "| --- | --- |",
        f"| requests | {result.requests} ({result.requests_per_s:.1f}/s) |",
        f"| images | {result.images} ({result.images_per_s:.1f}/s) |",
        f"| expected per-image errors (the bad images) | {result.expected_image_errors} |",
        f"| unexpected errors | {result.unexpected} |",
        f"| worker RSS after warm-up / at the end | {result.rss_mb_after_warmup:.0f} MB / {result.rss_mb_end:.0f} MB "
        f"({result.rss_growth:+.1%}) |",
        f"| worker restarts | {'none' if result.worker_pids_start == result.worker_pids_end else 'yes'} |",
        "",
        "Latency per request, milliseconds, from sending to the whole reply read:",
        "",
        "| request | count | p50 | p90 | p99 | max |",
        "| --- | --- | --- | --- | --- | --- |",
        *rows,
        "",
        f"Worker RSS every {RSS_EVERY_S:.0f} s (MB): {', '.join(f'{r:.0f}' for r in result.rss_mb_samples)}.",
        "",
        "Latency includes waiting: the clients share one worker, which runs up to `batchSize` (8) requests per",
        "forward pass, so a request waits for the batch ahead of it, then for its own. `tests/test_faults.py` runs the same",
        "test (8 clients, 60 s, a dedicated server) and fails on any unexpected error or on worker RSS at the end",
        "more than 10% above RSS after the warm-up.",
        "",
    ])  # fmt: skip


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__.splitlines()[0], epilog=__doc__.split("\n\n", 1)[1],
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )  # fmt: skip
    parser.add_argument("--url", default="http://127.0.0.1:8080", help="inference address (loopback only)")
    parser.add_argument("--model", default="efficientnet_lite0-embed")
    parser.add_argument("--token-file", type=Path, default=Path("key_file.json"), help="TorchServe's key_file.json")
    parser.add_argument("--start", action="store_true", help="start a TorchServe of our own on free loopback ports")
    parser.add_argument("--model-store", type=Path, default=REPO / "model_store", help="with --start (default model_store)")
    parser.add_argument("--build", action="store_true", help="with --start: build the archive afresh with build_mar.sh")
    parser.add_argument("--clients", type=int, default=8)
    parser.add_argument("--duration", type=float, default=60, help="seconds measured (default 60)")
    parser.add_argument("--warmup", type=float, default=15, help="seconds of load before measuring (default 15)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--json", type=Path, help="write the result as JSON here")
    parser.add_argument("--markdown", type=Path, help="write the result as Markdown here (docs/LOAD.md)")
    args = parser.parse_args(argv)
    log = lambda message: print(message, file=sys.stderr, flush=True)  # noqa: E731
    server, scratch = None, None
    try:
        if args.start:
            from tests.server import TorchServe, build_archive

            scratch = Path(tempfile.mkdtemp(prefix="imgsim-load-"))
            if args.build:
                log(f"building {args.model}.mar")
                args.model_store = build_archive(scratch / "store", "--arch", args.model.removesuffix("-embed"))
            if not (args.model_store / f"{args.model}.mar").is_file():
                raise SystemExit(f"load_test.py: {args.model_store}/{args.model}.mar not found; build it: ./build_mar.sh")
            log(f"starting TorchServe with {args.model}")
            server = TorchServe.start(scratch / "torchserve", args.model_store, (args.model,))
            url, token, pids = server.url, server.key, server.worker_pids
        else:
            assert_loopback(args.url)
            url, pids = args.url, None
            try:
                token = json.loads(args.token_file.read_text())["inference"]["key"]
            except (OSError, ValueError, KeyError) as err:
                raise SystemExit(f"load_test.py: no inference key in {args.token_file} ({err}); pass --token-file") from None
        result = run_load(url, args.model, token, clients=args.clients, duration=args.duration, warmup=args.warmup,
                          seed=args.seed, worker_pids=pids, log=log)  # fmt: skip
    finally:
        if server:
            server.stop()
        if scratch:
            shutil.rmtree(scratch, ignore_errors=True)
    command = "python bench/load_test.py " + " ".join(argv if argv is not None else sys.argv[1:])
    if args.json:
        args.json.write_text(json.dumps(asdict(result), indent=2) + "\n")
    if args.markdown:
        args.markdown.write_text(markdown(result, args.model, command.strip()))
    print(json.dumps(asdict(result), indent=2))
    return 1 if result.unexpected else 0


if __name__ == "__main__":
    sys.exit(main())
