"""What the commands share on the command line: server, store and output flags, output and logging."""

from __future__ import annotations

import argparse
import importlib
import logging
import os
import sys
import threading
from pathlib import Path
from typing import TYPE_CHECKING, TextIO

from client.torchserve_client import DEFAULT_URL, TOKEN_ENV, EmbeddingClient, read_token

if TYPE_CHECKING:
    import pandas as pd

STORE_NAME = ".imgsim-store.sqlite"
FORMATS = ["table", "csv", "json", "markdown"]


def add_common_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--url", default=DEFAULT_URL, help=f"TorchServe inference address (default {DEFAULT_URL})")
    p.add_argument("--model", default="resnet18-embed", help="model name on the server")
    p.add_argument("--token", help="inference key (prefer $IMGSIM_TOKEN or --token-file: flags show in ps)")
    p.add_argument("--token-file", type=Path, default=Path("key_file.json"),
                   help="TorchServe's key_file.json, or a file holding only the key (a service's shared key); "
                   "default ./key_file.json")  # fmt: skip
    # 32 x 3 kept the 2-core server busiest end to end (bench/throughput.py; 16 x 2 was ~15% slower)
    p.add_argument("--batch-size", type=int, default=32, help="images per request (default 32)")
    p.add_argument("--concurrency", type=int, default=3, help="requests in flight (default 3)")
    p.add_argument("--retries", type=int, default=6, help="retries with backoff on connection errors and 503/507")
    p.add_argument("--store", help=f"SQLite file or postgresql:// URL (default FOLDER/{STORE_NAME})")
    p.add_argument("--no-store", action="store_true", help="remember nothing, embed everything")
    p.add_argument("--rehash", action="store_true",
                   help="read every file, even those whose size and mtime the store says are unchanged")  # fmt: skip
    p.add_argument("--retry-failed", action="store_true",
                   help="send again the files the server refused before as damaged or not an image (after "
                   "a server upgrade that reads more formats, say); they are remembered and skipped otherwise")
    p.add_argument("--format", default="table", choices=FORMATS)
    p.add_argument("--output", type=Path, help="write the results here instead of stdout")
    p.add_argument("--quiet", action="store_true", help="no progress bar")


def check_common_args(p: argparse.ArgumentParser, args: argparse.Namespace) -> None:
    if args.no_store and args.store:
        p.error("--store and --no-store exclude each other")
    if args.batch_size < 1 or args.concurrency < 1:
        p.error("--batch-size and --concurrency must be at least 1")


def make_client(args: argparse.Namespace) -> EmbeddingClient:
    """The server client, with the key from --token, $IMGSIM_TOKEN or the key file (never printed)."""
    token = read_token(args.token, args.token_file)
    if args.token:
        source = "--token"
    elif os.environ.get(TOKEN_ENV):
        source = f"${TOKEN_ENV}"
    elif token is None:
        source = f"none: {args.token_file} does not exist"
    else:
        source = f"from {args.token_file}"
    return EmbeddingClient(args.url, args.model, token, source, concurrency=args.concurrency, retries=args.retries)


def write_frame(args: argparse.Namespace, frame: pd.DataFrame, table: str | None = None) -> None:
    """``frame`` in ``args.format`` to ``args.output`` or stdout; csv and json a slice of rows at a time,
    so a million rows never become one string."""
    if args.output:
        with args.output.open("w", encoding="utf-8", newline="") as out:
            _write_frame(out, frame, args.format, table)
    else:
        _write_frame(sys.stdout, frame, args.format, table)


ROWS_PER_WRITE = 10_000


def _write_frame(out: TextIO, frame: pd.DataFrame, fmt: str, table: str | None) -> None:
    from tabulate import tabulate

    slices = [frame.iloc[i : i + ROWS_PER_WRITE] for i in range(0, len(frame), ROWS_PER_WRITE)] or [frame]
    if fmt == "csv":
        for n, part in enumerate(slices):
            out.write(part.to_csv(index=False, header=n == 0))
    elif fmt == "json":  # one array: each slice's records without its brackets, joined by commas
        out.write("[")
        for n, part in enumerate(slices):
            records = part.to_json(orient="records", indent=2)[1:-1].rstrip()
            if records:
                out.write(("," if n else "") + records)
        out.write("\n]\n" if len(frame) else "]\n")
    elif fmt == "markdown":
        out.write(_blank_missing(frame).to_markdown(index=False) + "\n")
    elif table is not None:
        out.write(table)
    elif not len(frame):
        out.write("nothing found\n")
    else:
        shown = _blank_missing(frame.drop(columns=[c for c in ("sha256", "path", "match") if c in frame.columns]))
        out.write(tabulate(shown, headers="keys", tablefmt="simple", showindex=False, floatfmt=".3f") + "\n")


def _blank_missing(frame: pd.DataFrame) -> pd.DataFrame:
    """Missing values as empty cells: tabulate cannot take pandas's NA (a failed file's rank) at all."""
    return frame.astype(object).where(frame.notna(), "") if frame.isna().to_numpy().any() else frame


def preload(*modules: str) -> threading.Thread:
    """Imports ``modules`` on a thread while the first requests go out: pandas alone takes 0.3 s,
    which then overlaps the server's work instead of delaying the first request."""
    thread = threading.Thread(target=lambda: [importlib.import_module(m) for m in modules], daemon=True)
    thread.start()
    return thread


def show_notices(prog: str) -> None:
    """The library's notices (a store schema upgrade, say) as ``prog: message`` lines on stderr."""
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(logging.Formatter(f"{prog}: %(message)s"))
    library = logging.getLogger("client")
    library.addHandler(handler)
    library.setLevel(logging.INFO)
