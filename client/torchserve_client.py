"""The TorchServe client: batches as tar bodies, several in flight, retries with backoff."""

from __future__ import annotations

import io
import os
import tarfile
import time
from concurrent.futures import FIRST_COMPLETED, ThreadPoolExecutor, as_completed, wait
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterable, Iterator, Sequence

import requests

from client.server_files import ServerError, read_keys

RETRY_STATUSES = (502, 503, 504, 507)  # worker restarting, overloaded or out of memory
# TorchServe fails the requests in flight when a model worker process dies ("Worker died."):
# 507 when it saw exit code 137 (SIGKILL, the OOM killer), else 500. It restarts the worker,
# so these 500s are worth retrying; any other 500 is a bug and is not.
WORKER_DIED = "Worker died."
TOKEN_ENV = "IMGSIM_TOKEN"
# config/config.properties' inference_address (a test checks that the two agree)
DEFAULT_URL = "http://127.0.0.1:8080"


class ServerUnreachable(ServerError):
    pass


class KeyRefused(ServerError):
    pass


@dataclass(frozen=True)
class Upload:
    name: str  # unique within a request: the server echoes it back
    path: Path


@dataclass(frozen=True)
class Result:
    name: str
    body: dict  # the server's item: {"embedding", "predictions", "model", ...} or {"error": {...}}

    @property
    def error(self) -> dict | None:
        return self.body.get("error")


def read_token(token: str | None, token_file: Path | None) -> str | None:
    """The key to send: --token, else $IMGSIM_TOKEN, else the key file (``read_token_file``)."""
    if token:
        return token
    if os.environ.get(TOKEN_ENV):
        return os.environ[TOKEN_ENV]
    if token_file and token_file.is_file():
        return read_token_file(token_file)
    return None


def read_token_file(path: Path) -> str:
    """The key in ``path``: TorchServe's key_file.json (its inference key), or a file holding only
    a key, as a mounted Kubernetes Secret does (the shared key of several replicas, deploy/)."""
    text = Path(path).read_text(encoding="utf-8", errors="replace").strip()
    if text.startswith("{"):
        return read_keys(path).inference
    if not text or len(text.split()) != 1:
        raise ServerError(
            f"{path} is neither TorchServe's key_file.json nor a file holding one key (one word, no spaces)"
        )
    return text


class EmbeddingClient:
    def __init__(
        self, url: str, model: str, token: str | None, token_source: str, *, timeout: float = 300,
        retries: int = 6, backoff: float = 0.5, concurrency: int = 2,
    ):  # fmt: skip
        self.url, self.model, self.token_source = url.rstrip("/"), model, token_source
        self.timeout, self.retries, self.backoff = timeout, retries, backoff
        self.concurrency = max(1, concurrency)
        self.session = requests.Session()
        adapter = requests.adapters.HTTPAdapter(pool_connections=self.concurrency, pool_maxsize=self.concurrency)
        self.session.mount("http://", adapter)
        self.session.mount("https://", adapter)
        if token:
            self.session.headers["Authorization"] = f"Bearer {token}"

    @property
    def predict_url(self) -> str:
        return f"{self.url}/predictions/{self.model}"

    def embed_batches(
        self, batches: Sequence[Sequence[Upload]], on_result: Callable[[list[Result]], None] | None = None
    ) -> Iterator[list[Result]]:
        """Sends each batch as one request, ``concurrency`` at a time; yields as they finish."""
        with ThreadPoolExecutor(self.concurrency) as pool:
            for results in _as_completed_in_flight(pool, self._send, batches, self.concurrency):
                if on_result:
                    on_result(results)
                yield results

    def _send(self, batch: Sequence[Upload]) -> list[Result]:
        try:
            body = tar_body(batch)
        except OSError as exc:
            # a file deleted or made unreadable since it was listed (a folder being watched): it fails alone
            if len(batch) == 1:
                return [Result(batch[0].name, _unreadable(batch[0], exc))]
            half = len(batch) // 2
            return self._send(batch[:half]) + self._send(batch[half:])
        response = self._post_with_retries(body)
        if _over_size_limit(response):
            # halve the batch until it fits; a single file that is too big fails on its own.
            if len(batch) > 1:
                half = len(batch) // 2
                return self._send(batch[:half]) + self._send(batch[half:])
            return [Result(batch[0].name, _too_large(batch[0], batch[0].path.stat().st_size))]
        try:
            items = response.json()
        except ValueError:
            raise ServerError(
                f"TorchServe answered {response.status_code} with a body that is not JSON: {response.text[:200]!r}"
            ) from None
        if isinstance(items, dict) and "error" in items:  # the whole request was refused
            return [Result(u.name, items) for u in batch]
        by_name = {item.get("file"): item for item in items}
        return [Result(u.name, by_name.get(u.name) or _missing(u)) for u in batch]

    def _post_with_retries(self, body: bytes) -> requests.Response:
        delay = self.backoff
        for attempt in range(self.retries + 1):
            try:
                response = self.session.post(
                    self.predict_url, data=body, headers={"Content-Type": "application/x-tar"}, timeout=self.timeout
                )
            except (requests.ConnectionError, requests.Timeout) as exc:
                if attempt == self.retries:
                    raise ServerUnreachable(
                        f"cannot reach TorchServe at {self.url} ({type(exc).__name__}). Start it with "
                        f"./serve.sh (or: torchserve --start --ncs --ts-config config/config.properties "
                        f"--model-store model_store --models {self.model}={self.model}.mar), or pass --url"
                    ) from None
            else:
                if response.status_code == 400 and "InvalidKeyException" in response.text:
                    raise KeyRefused(
                        f"TorchServe refused the inference key ({self.token_source}). Pass the 'inference' key "
                        f"from the key_file.json that TorchServe wrote in the directory it was started from: "
                        f"--token-file PATH/key_file.json, --token KEY or ${TOKEN_ENV}"
                    )
                if response.status_code == 401:  # a replica's edge proxy (deploy/): not the shared key
                    sent = "the key" if "Authorization" in self.session.headers else "a request without a key"
                    raise KeyRefused(
                        f"the service at {self.url} refused {sent} ({self.token_source}) with 401: it takes the "
                        f"service's shared key (the Secret its replicas check), not one replica's TorchServe key. "
                        f"Pass it with --token-file FILE (a file holding only the key), ${TOKEN_ENV} or --token KEY"
                    )
                if response.status_code == 404:
                    raise ServerError(f"TorchServe at {self.url} serves no model named {self.model!r}; pass --model")
                worker_died = response.status_code >= 500 and WORKER_DIED in response.text
                if response.status_code not in RETRY_STATUSES and not worker_died:
                    if response.status_code >= 500:
                        raise ServerError(f"TorchServe answered {response.status_code}: {response.text[:300]}")
                    return response
                if attempt == self.retries:
                    if worker_died:
                        raise ServerError(
                            f"TorchServe's model worker died on each of {self.retries + 1} tries of the same request "
                            f"(last answer {response.status_code}). Look for the cause (out of memory?) in "
                            "logs/model_log.log in the folder TorchServe was started from"
                        )
                    raise ServerError(f"TorchServe kept answering {response.status_code}: {response.text[:300]}")
            time.sleep(delay)
            delay = min(delay * 2, 10.0)
        raise AssertionError("unreachable")


def tar_body(batch: Sequence[Upload]) -> bytes:
    """The batch as an uncompressed tar: TorchServe passes such a body on as it is, where it would
    parse a multipart body (several times the CPU) and rewrite part names (":;=," become spaces)."""
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w", format=tarfile.PAX_FORMAT) as archive:
        for upload in batch:
            data = upload.path.read_bytes()
            info = tarfile.TarInfo(upload.name)  # a label the server echoes back, never a path there
            info.size = len(data)
            archive.addfile(info, io.BytesIO(data))
    return buffer.getvalue()


def _over_size_limit(response: requests.Response) -> bool:
    """A 413 for the size of the body: TorchServe's own (empty) or an edge proxy's in front of it
    (deploy/edge: JSON without an imgsim error). The handler's own 413s name an imgsim error."""
    if response.status_code != 413:
        return False
    try:
        body = response.json()
    except ValueError:
        return True
    return not (isinstance(body, dict) and "error" in body)


def _too_large(upload: Upload, size: int) -> dict:
    message = f"{size:,} bytes is over the server's request size limit (max_request_size in config.properties)"
    return {"file": upload.name, "error": {"code": "too_large", "message": message}}


def _unreadable(upload: Upload, exc: OSError) -> dict:
    message = f"could not be read to send it: {exc.strerror or exc}"
    return {"file": upload.name, "error": {"code": "unreadable", "message": message}}


def _missing(upload: Upload) -> dict:
    return {"file": upload.name, "error": {"code": "no_result", "message": "the server returned no result for it"}}


def _as_completed_in_flight(pool, fn, items: Iterable, limit: int) -> Iterator:
    """Like as_completed, but keeps at most ``limit`` items in flight (bounded memory for big folders)."""
    pending = set()
    for item in items:
        pending.add(pool.submit(fn, item))
        if len(pending) >= limit:
            done, pending = wait(pending, return_when=FIRST_COMPLETED)
            for future in done:
                yield future.result()
    for future in as_completed(pending):
        yield future.result()
