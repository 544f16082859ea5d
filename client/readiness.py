"""Is the service ready? Exit 0 only when every model answers a real inference; the one readiness check.

    python -m client.readiness                  # the server started from this folder, now
    python -m client.readiness --wait 120       # until ready (serve.sh does this), at most 120 s
    python -m client.readiness --dir /srv/imgsim --model resnet18-embed

TorchServe's ``/ping`` says "Healthy" while a model's worker is still loading or restarting
(pytorch/serve #2434, #3047), so it cannot tell a load balancer or a user when requests
will be answered. This asks what TorchServe knows and then tries it: for each model
(every registered one, or those named with --model) the describe-model API must show
at least minWorkers workers READY, and a 1x1 PNG sent to ``/predictions`` must come
back 200 with an embedding. Keys come from the key_file.json TorchServe wrote and the
addresses from serve.sh's logs/serving.properties, both in --dir. Stdlib only, so the
official container can run it as its exec probe.
"""

from __future__ import annotations

import argparse
import json
import struct
import sys
import time
import urllib.error
import urllib.request
import zlib
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import quote, urlsplit, urlunsplit

from client.server_files import KEY_FILE, ServerError, read_keys, read_properties, serving_config

POLL_S = 0.5


class NotReady(Exception):
    """Why the service cannot answer yet, in words."""


@dataclass(frozen=True)
class Verdict:
    model: str
    ready: bool
    reason: str


def probe_image() -> bytes:
    """A 1x1 RGB PNG, made without Pillow: the smallest image the server serves."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    header = struct.pack(">IIBBBBB", 1, 1, 8, 2, 0, 0, 0)  # 1x1, 8-bit RGB
    pixels = zlib.compress(b"\x00" + bytes((200, 30, 30)))  # filter byte, one red pixel
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", pixels) + chunk(b"IEND", b"")


def check(folder: Path, models: Sequence[str] = (), timeout: float = 10.0) -> list[Verdict]:
    """One verdict per model; raises NotReady when the server as a whole cannot be asked."""
    folder = Path(folder)
    if not (folder / KEY_FILE).is_file():
        raise NotReady(f"no {KEY_FILE} in {folder}: TorchServe was not started from there, or not yet")
    try:
        keys = read_keys(folder / KEY_FILE)
    except ServerError as error:
        raise NotReady(str(error)) from None
    settings = read_properties(serving_config(folder))
    management = _local(settings.get("management_address", "http://127.0.0.1:8081"))
    inference = _local(settings.get("inference_address", "http://127.0.0.1:8080"))
    listed = _get_json(f"{management}/models", keys.management, timeout)
    registered = [entry["modelName"] for entry in listed.get("models", [])]
    missing = [name for name in models if name not in registered]
    if missing:
        raise NotReady(f"{', '.join(missing)} not registered (registered: {', '.join(registered) or 'none'})")
    if not registered:
        raise NotReady("no model is registered")
    return [_check_model(name, management, inference, keys, timeout) for name in (models or registered)]


def _check_model(name: str, management: str, inference: str, keys, timeout: float) -> Verdict:
    described = _get_json(f"{management}/models/{quote(name, safe='')}", keys.management, timeout)[0]
    workers = described.get("workers", [])
    ready = sum(worker.get("status") == "READY" for worker in workers)
    wanted = max(1, int(described.get("minWorkers", 1)))
    if ready < wanted:
        states = ", ".join(sorted(worker.get("status", "?") for worker in workers)) or "no worker yet"
        return Verdict(name, False, f"{ready} of {wanted} workers READY ({states})")
    started = time.monotonic()
    try:
        status, body = _call(f"{inference}/predictions/{quote(name, safe='')}", keys.inference, timeout,
                             probe_image())  # fmt: skip
    except NotReady as error:
        return Verdict(name, False, f"a test image was not answered: {error}")
    if status != 200:
        return Verdict(name, False, f"a test image got HTTP {status}: {body[:200]}")
    if not _embedding_in(body):
        return Verdict(name, False, f"a test image got 200 without an embedding: {body[:200]}")
    took = (time.monotonic() - started) * 1000
    return Verdict(name, True, f"{ready}/{wanted} workers READY, a test image answered in {took:.0f} ms")


def _embedding_in(body: str) -> bool:
    try:
        return bool(json.loads(body).get("embedding"))
    except (ValueError, AttributeError):
        return False


def _local(address: str) -> str:
    """The address to connect to: a server listening on every interface is asked on loopback."""
    parts = urlsplit(address)
    host = {"0.0.0.0": "127.0.0.1", "[::]": "[::1]"}.get(parts.hostname or "", None)
    if host is None:
        return address.rstrip("/")
    netloc = f"{host}:{parts.port}" if parts.port else host
    return urlunsplit((parts.scheme, netloc, parts.path, "", "")).rstrip("/")


def _get_json(url: str, key: str, timeout: float):
    status, body = _call(url, key, timeout)
    if status != 200:
        raise NotReady(f"GET {url} answered HTTP {status}: {body[:200]}")
    return json.loads(body)


def _call(url: str, key: str, timeout: float, data: bytes | None = None) -> tuple[int, str]:
    headers = {"Authorization": f"Bearer {key}"}
    if data is not None:  # urllib would call the bytes a form, which TorchServe then parses as one
        headers["Content-Type"] = "image/png"
    request = urllib.request.Request(url, data=data, headers=headers)
    try:
        with urllib.request.urlopen(request, timeout=timeout) as response:
            return response.status, response.read().decode("utf-8", "replace")
    except urllib.error.HTTPError as error:
        return error.code, error.read().decode("utf-8", "replace")
    except (urllib.error.URLError, OSError) as error:  # refused, reset, timed out
        reason = getattr(error, "reason", error)
        raise NotReady(f"nothing answers at {urlsplit(url).netloc} ({reason})") from None


def wait(folder: Path, models: Sequence[str], seconds: float, timeout: float, say=print) -> list[Verdict] | None:
    """Checks until every model is ready (its verdicts) or ``seconds`` pass (None); ``say`` hears each new reason."""
    deadline, last = time.monotonic() + seconds, None
    while True:
        try:
            verdicts = check(folder, models, timeout)
            reason = "; ".join(f"{v.model}: {v.reason}" for v in verdicts if not v.ready)
            if not reason:
                return verdicts
        except NotReady as error:
            reason = str(error)
        if reason != last:
            say(f"not ready yet: {reason}")
            last = reason
        if time.monotonic() >= deadline:
            return None
        time.sleep(POLL_S)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m client.readiness", description=__doc__.splitlines()[0],
        epilog="exit status: 0 ready, 1 not ready (the reason is on stderr)",
    )  # fmt: skip
    parser.add_argument("--dir", type=Path, default=Path.cwd(), help="folder TorchServe was started from (default: .)")
    parser.add_argument("--model", action="append", default=[], help="a model that must be ready (default: all)")
    parser.add_argument("--wait", type=float, default=0.0, metavar="SECONDS", help="keep checking this long")
    parser.add_argument("--timeout", type=float, default=10.0, help="seconds each HTTP call may take")
    args = parser.parse_args(argv)

    def say(line: str) -> None:
        print(line, file=sys.stderr, flush=True)

    verdicts = wait(args.dir, args.model, args.wait, args.timeout, say)
    if verdicts is None:
        say(f"not ready after {args.wait:.0f} s" if args.wait else "not ready")
        return 1
    for verdict in verdicts:
        print(f"ready: {verdict.model}: {verdict.reason}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
