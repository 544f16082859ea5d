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
import json
import shutil
import sys
import tempfile
from dataclasses import asdict
from datetime import datetime, timezone
from pathlib import Path

from client.server_files import ServerError, read_keys
from client.torchserve_client import DEFAULT_URL
from devtools import REPO
from devtools.load import RSS_EVERY_S, LoadResult, assert_loopback, run_load
from devtools.torchserve import TorchServe, build_archive


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
        "forward pass, so a request waits for the batch ahead of it, then for its own. `tests/integration/test_faults.py` runs the same",
        "test (8 clients, 60 s, a dedicated server) and fails on any unexpected error or on worker RSS at the end",
        "more than 10% above RSS after the warm-up.",
        "",
    ])  # fmt: skip


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__.splitlines()[0], epilog=__doc__.split("\n\n", 1)[1],
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )  # fmt: skip
    parser.add_argument("--url", default=DEFAULT_URL, help="inference address (loopback only)")
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
                token = read_keys(args.token_file).inference
            except (OSError, ServerError) as err:
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
