"""Rank a folder of images by similarity to a reference image, using the embedding server.

Embeddings are remembered in a store by content and model, so a rerun over an
unchanged folder sends nothing to the server.
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

if __package__ in (None, ""):  # run as `python client/rank.py`
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import pandas as pd  # noqa: E402
from tabulate import tabulate  # noqa: E402

from client import report  # noqa: E402
from client.api import TOKEN_ENV, EmbeddingClient, ServerError, read_token  # noqa: E402
from client.embedding import Embedded, embed_files  # noqa: E402
from client.metrics import METRICS, Metric, get_metric  # noqa: E402
from client.ranking import COLUMNS, rank_files, rank_stored  # noqa: E402
from client.scan import candidate_files, describe  # noqa: E402
from client.store import StoreError, model_key, open_store  # noqa: E402

STORE_NAME = ".imgsim-store.sqlite"
EXAMPLES = f"""examples:
  python client/rank.py                                   # images/ against images/cat.png
  python client/rank.py --images_folder ~/photos --ref_image ~/query.jpg --top-k 20 --metric euclidean
  python client/rank.py --images_folder ~/photos --ref_image x.jpg --format csv --output ranking.csv
  python client/rank.py --images_folder ~/photos --ref_image x.jpg --html report.html
  python client/rank.py --store ~/photos/{STORE_NAME} --ref_image x.jpg   # search everything stored

The store of seen images is FOLDER/{STORE_NAME} unless --store names another
SQLite file or a postgresql:// URL (PostgreSQL with pgvector).
The inference key comes from --token, $IMGSIM_TOKEN or --token-file (TorchServe's key_file.json).
"""


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        prog="rank.py", description=__doc__.splitlines()[0], epilog=EXAMPLES,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )  # fmt: skip
    p.add_argument("--images_folder", "--images-folder", type=Path, help="folder to rank (default images)")
    p.add_argument("--ref_image", "--ref-image", default="cat.png", help="reference: a name in the folder or a path")
    p.add_argument("--top-k", type=int, default=10, help="rows in the table and the HTML report (default 10)")
    p.add_argument("--metric", default="cosine", choices=list(METRICS), help="default cosine")
    p.add_argument("--url", default="http://127.0.0.1:8080", help="TorchServe inference address")
    p.add_argument("--model", default="resnet18-embed", help="model name on the server")
    p.add_argument("--token", help="inference key (prefer $IMGSIM_TOKEN or --token-file: flags show in ps)")
    p.add_argument("--token-file", type=Path, default=Path("key_file.json"), help="default ./key_file.json")
    p.add_argument("--recursive", action="store_true", help="include subfolders")
    p.add_argument("--batch-size", type=int, default=16, help="images per request (default 16)")
    p.add_argument("--concurrency", type=int, default=2, help="requests in flight (default 2)")
    p.add_argument("--retries", type=int, default=6, help="retries with backoff on connection errors and 503/507")
    p.add_argument("--store", help=f"SQLite file or postgresql:// URL (default FOLDER/{STORE_NAME})")
    p.add_argument("--no-store", action="store_true", help="remember nothing, embed everything")
    p.add_argument("--format", default="table", choices=["table", "csv", "json", "markdown"])
    p.add_argument("--output", type=Path, help="write the ranking here instead of stdout")
    p.add_argument("--html", type=Path, help="also write a self-contained HTML report with thumbnails")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    args = p.parse_args(argv)
    if args.no_store and args.store:
        p.error("--store and --no-store exclude each other")
    if args.batch_size < 1 or args.concurrency < 1 or args.top_k < 1:
        p.error("--batch-size, --concurrency and --top-k must be at least 1")
    return args


def resolve_reference(ref: str, folder: Path | None) -> Path:
    candidates = [Path(ref).expanduser()] + ([folder / ref] if folder else [])
    for candidate in candidates:
        if candidate.is_file():
            return candidate
    if folder:
        raise SystemExit(f"rank.py: reference image {ref!r} not found (as a path or in {folder}); pass --ref_image")
    raise SystemExit(
        f"rank.py: reference image {ref!r} not found. With --store and no --images_folder, rank.py searches "
        "everything stored: pass --ref_image as a path, or --images_folder to rank a folder"
    )


def header(metric: Metric) -> str:
    return f"{metric.name} {'similarity (higher is closer)' if metric.descending else 'distance (lower is closer)'}"


def emit(frame: pd.DataFrame, args: argparse.Namespace, metric: Metric) -> None:
    if args.format == "csv":
        text = frame.to_csv(index=False)
    elif args.format == "json":
        text = frame.to_json(orient="records", indent=2) + "\n"
    elif args.format == "markdown":
        text = frame.to_markdown(index=False) + "\n"
    else:
        top = frame[frame["rank"].notna()].head(args.top_k)
        table = [[r["rank"], r["file"], f"{r['score']:.4f}", r["label"], f"{r['probability']:.3f}",
                  f"same bytes as {r['duplicate_of']}" if r["duplicate_of"] else ""] for _, r in top.iterrows()]  # fmt: skip
        text = tabulate(table, headers=["rank", "file", header(metric), "label", "prob", "note"], tablefmt="grid") + "\n"
    if args.output:
        args.output.write_text(text, encoding="utf-8")
    else:
        sys.stdout.write(text)


def write_html(path: Path, reference: Path, ref_item: dict, frame: pd.DataFrame, metric: Metric, k: int) -> None:
    top = frame[frame["rank"].notna()].head(k)
    ref_card = report.Card(reference, reference.name, [ref_item["predictions"][0]["label"]], reference=True)
    cards = [
        report.Card(Path(r["path"]), f"#{r['rank']} {r['file']}", [f"{metric.name} {r['score']:.4f}", r["labels"]])
        for _, r in top.iterrows()
    ]
    report.write(path, f"Most similar to {reference.name}", [("Reference", [ref_card]), (f"Top {len(cards)}", cards)])


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    metric = get_metric(args.metric)
    collection = args.images_folder is None and args.store is not None
    folder = None if collection else (args.images_folder or Path("images"))
    if folder is not None and not folder.is_dir():
        print(f"rank.py: {folder} is not a folder; pass --images_folder", file=sys.stderr)
        return 2
    reference_path = resolve_reference(args.ref_image, folder)
    token_source = "--token" if args.token else ("$IMGSIM_TOKEN" if os.environ.get(TOKEN_ENV) else f"from {args.token_file}")
    try:
        token = read_token(args.token, args.token_file)
        client = EmbeddingClient(
            args.url, args.model, token, token_source, concurrency=args.concurrency, retries=args.retries
        )
        store = None if args.no_store else open_store(args.store or folder / STORE_NAME)
        try:
            return run(args, metric, folder, reference_path, client, store)
        finally:
            if store:
                store.close()
    except (ServerError, StoreError) as exc:
        print(f"rank.py: {exc}", file=sys.stderr)
        return 2


def run(args, metric: Metric, folder: Path | None, reference_path: Path, client, store) -> int:
    images, others = candidate_files(folder, args.recursive) if folder else ([], [])
    reference = describe(reference_path, folder)
    files = [describe(path, folder) for path in images]
    embedded: Embedded = embed_files(
        files + [reference], client, store, args.batch_size, progress=not args.quiet
    )
    if reference.sha256 not in embedded.items:
        error = embedded.errors.get(reference.sha256, {"code": "?", "message": "no result"})
        print(f"rank.py: the reference {reference_path} cannot be used: {error['message']}", file=sys.stderr)
        return 1
    ref_item = embedded.items[reference.sha256]
    if folder is None:
        key = model_key(embedded.identity)
        hits = store.search(key, ref_item["embedding"], max(args.top_k, 1), metric.name, exclude={reference.sha256})
        frame = rank_stored(hits, store.get_many(key, [s for s, _ in hits]), store.paths(key, [s for s, _ in hits]), metric)
    else:
        frame = rank_files(files, reference, embedded, metric)
    top = ref_item["predictions"][0]
    print(f"reference: {reference_path}  ->  {top['label']} ({top['probability']:.3f})", file=sys.stderr)
    emit(frame[COLUMNS], args, metric)
    if args.html:
        write_html(args.html, reference_path, ref_item, frame, metric, args.top_k)
    failed = int(frame["score"].isna().sum())
    print(
        f"ranked {int(frame['score'].notna().sum())}, skipped {len(others)} (not images), failed {failed}; "
        f"sent {embedded.sent} to the server, reused {embedded.reused} from the store",
        file=sys.stderr,
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
