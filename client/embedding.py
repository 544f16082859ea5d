"""Embeds files through the server unless the store already has them (by content and model)."""

from __future__ import annotations

import sys
from dataclasses import dataclass, field
from typing import Sequence

import numpy as np
from tqdm import tqdm

from client.scan import ImageFile
from client.store import EmbeddingStore, StoredImage
from client.torchserve_client import EmbeddingClient, ServerError, Upload


@dataclass
class Embedded:
    """What is known after a run: vectors and labels by sha256, and the per-file failures."""

    identity: dict | None
    items: dict[str, StoredImage] = field(default_factory=dict)
    errors: dict[str, dict] = field(default_factory=dict)  # sha256 -> {"code", "message"}
    sent: int = 0
    reused: int = 0


def embed_files(
    files: Sequence[ImageFile], client: EmbeddingClient, store: EmbeddingStore | None, batch_size: int,
    progress: bool = True,
) -> Embedded:  # fmt: skip
    """Every distinct content in ``files`` ends up embedded or with an error, each embedded once."""
    first_file: dict[str, ImageFile] = {}
    for f in files:
        first_file.setdefault(f.sha256, f)
    identity = store.endpoint(client.url, client.model) if store else None
    done = Embedded(identity)
    if store and identity:
        done.items = store.get_many(identity, first_file)
        done.reused = len(done.items)
        if first_file.keys() - done.items.keys() == set():
            store.remember_paths({f.sha256: str(f.path) for f in files})
            return done
    by_name: dict[str, ImageFile] = {}
    for f in (first_file[sha] for sha in first_file if sha not in done.items):
        # a reference outside the folder may share its name with a folder file: keep the two apart
        by_name[f.name if f.name not in by_name else f"{f.name}@{f.sha256[:12]}"] = f
    missing = list(by_name)
    batches = [
        [Upload(name, by_name[name].path) for name in missing[i : i + batch_size]]
        for i in range(0, len(missing), batch_size)
    ]
    bar = tqdm(total=len(missing), unit="img", desc="embedding", file=sys.stderr, disable=not progress)
    saved = 0
    try:
        for results in client.embed_batches(batches):
            new: list[StoredImage] = []
            paths: dict[str, str] = {}
            for result in results:
                f = by_name[result.name]
                if result.error:
                    done.errors[f.sha256] = result.error
                    tqdm.write(f"warning: {f.path}: {result.error['code']}: {result.error['message']}", file=sys.stderr)
                    continue
                if done.identity != result.body["model"]:
                    _remember_model(done, result.body["model"], store, client)
                item: StoredImage = {
                    "sha256": f.sha256,
                    "embedding": np.asarray(result.body["embedding"], dtype=np.float32),
                    "predictions": result.body["predictions"],
                }
                new.append(item)
                paths[f.sha256] = str(f.path)
                done.items[f.sha256] = item
            if store and new:  # one transaction per request: a killed run keeps every finished batch
                store.put_many(done.identity, new, paths)
                saved += len(new)
            done.sent += len(results)
            bar.update(len(results))
    except ServerError as exc:
        if saved:  # say that the work done so far is not lost, and how to go on
            raise type(exc)(
                f"{exc}\nThe {saved} images embedded before that are saved in the store: "
                "rerun the same command to embed only the rest"
            ) from None
        raise
    finally:
        bar.close()
    if done.reused and done.identity != identity:
        # the server's model changed under us: what came from the store belonged to the old one
        return embed_files(files, client, store, batch_size, progress)
    if store and done.identity:
        store.remember_paths({f.sha256: str(f.path) for f in files if f.sha256 in done.items})
    return done


def _remember_model(done: Embedded, identity: dict, store: EmbeddingStore | None, client: EmbeddingClient) -> None:
    if done.identity is not None:
        tqdm.write(
            f"note: {client.url} now serves {identity['architecture']} (weights {identity['weights_sha256'][:12]}); "
            "vectors stored for the previous model are not reused",
            file=sys.stderr,
        )
    done.identity = identity
    if store:
        store.remember_endpoint(client.url, client.model, identity)
