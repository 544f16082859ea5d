"""Rank a folder of images by similarity to a reference image, using the embedding server.

Embeddings are remembered in a store by content and model, so a rerun over an
unchanged folder sends nothing to the server.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import TYPE_CHECKING

from client.commands.options import (
    STORE_NAME,
    add_common_args,
    check_common_args,
    make_client,
    preload,
    show_notices,
    write_frame,
)  # fmt: skip
from client.embedding import Embedded, embed_files
from client.metrics import METRICS, Metric, get_metric
from client.scan import candidate_files, held_note, outside_move_folders, scan_files
from client.store import StoreError, open_store
from client.torchserve_client import ServerError

if TYPE_CHECKING:
    import pandas as pd

# needed once the embeddings are in; imported meanwhile (see cli.preload)
LATER = ("pandas", "tabulate", "client.ranking")

EXAMPLES = f"""examples:
  python client/rank.py                                   # images/ against images/cat.png
  python client/rank.py --images_folder ~/photos --ref_image ~/query.jpg --top-k 20 --metric euclidean
  python client/rank.py --images_folder ~/photos --ref_image x.jpg --format csv --output ranking.csv
  python client/rank.py --images_folder ~/photos --ref_image x.jpg --html report.html
  python client/rank.py --store ~/photos/{STORE_NAME} --ref_image x.jpg   # search everything stored
  python client/rank.py --store ~/photos/{STORE_NAME} --ref_image new.jpg --seen   # seen it, or an edit of it?

The store of seen images is FOLDER/{STORE_NAME} unless --store names another
SQLite file or a postgresql:// URL (PostgreSQL with pgvector).
The key comes from --token, $IMGSIM_TOKEN or --token-file: TorchServe's key_file.json, or a file
holding only the shared key of a service with several replicas (README, "Scale-out").
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
    p.add_argument("--recursive", action="store_true", help="include subfolders")
    add_common_args(p)
    p.add_argument("--html", type=Path, help="also write a self-contained HTML report with thumbnails")
    p.add_argument("--seen", action="store_true", help="only say whether the store holds this image or an edit of it")
    args = p.parse_args(argv)
    check_common_args(p, args)
    if args.seen and args.no_store:
        p.error("--seen looks in the store; drop --no-store")
    if args.top_k < 1:
        p.error("--top-k must be at least 1")
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
    from tabulate import tabulate

    top = frame.head(args.top_k)  # the ranked rows come first
    top = top[top["rank"].notna()]
    rows = [[r["rank"], r["file"], f"{r['score']:.4f}", r["label"], f"{r['probability']:.3f}",
             f"same bytes as {r['duplicate_of']}" if r["duplicate_of"] else ""] for _, r in top.iterrows()]  # fmt: skip
    grid = tabulate(rows, headers=["rank", "file", header(metric), "label", "prob", "note"], tablefmt="grid") + "\n"
    write_frame(args, frame, table=grid)


def write_html(path: Path, reference: Path, ref_item: dict, frame: pd.DataFrame, metric: Metric, k: int) -> None:
    from client.commands import html_report as report

    top = frame.head(k)
    top = top[top["rank"].notna()]
    ref_card = report.Card(reference, reference.name, [ref_item["predictions"][0]["label"]], reference=True)
    cards = [
        report.Card(Path(r["path"]), f"#{r['rank']} {r['file']}", [f"{metric.name} {r['score']:.4f}", r["labels"]])
        for _, r in top.iterrows()
    ]
    report.write(path, f"Most similar to {reference.name}", [("Reference", [ref_card]), (f"Top {len(cards)}", cards)])


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    show_notices("rank.py")
    metric = get_metric(args.metric)
    collection = args.images_folder is None and args.store is not None
    folder = None if collection else (args.images_folder or Path("images"))
    if folder is not None and not folder.is_dir():
        print(f"rank.py: {folder} is not a folder; pass --images_folder", file=sys.stderr)
        return 2
    reference_path = resolve_reference(args.ref_image, folder)
    try:
        client = make_client(args)
        store = None if args.no_store else open_store(args.store or folder / STORE_NAME)
        try:
            return run(args, metric, folder, reference_path, client, store)
        finally:
            if store:
                store.close()
    except (ServerError, StoreError) as exc:
        print(f"rank.py: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("rank.py: interrupted; what was hashed and embedded before that is kept: rerun to go on", file=sys.stderr)
        return 130


def run(args, metric: Metric, folder: Path | None, reference_path: Path, client, store) -> int:
    root = folder.resolve() if folder else None  # the store records resolved paths, as index.py does
    images, others = candidate_files(root, args.recursive) if root else ([], [])
    images, held = outside_move_folders(images, others)  # duplicates dedup.py moved aside are not ranked
    ref = str(reference_path.resolve())
    scanned = scan_files(images + ([] if ref in images else [ref]), root, store, rehash=args.rehash,
                         progress=not args.quiet)  # fmt: skip
    files = scanned.files[: len(images)]
    reference = next(f for f in scanned.files if f.path == ref)
    if root:
        print(scanned.line(), file=sys.stderr)
    preload(*LATER)
    embedded: Embedded = embed_files(
        files + [reference], client, store, args.batch_size, progress=not args.quiet, retry_failed=args.retry_failed
    )
    from client.ranking import rank_files, rank_stored
    if reference.sha256 not in embedded:
        error = embedded.errors.get(reference.sha256, {"code": "?", "message": "no result"})
        print(f"rank.py: the reference {reference_path} cannot be used: {error['message']}", file=sys.stderr)
        return 1
    ref_item = embedded.item(reference.sha256)
    if args.seen:
        return report_seen(args, store, embedded.identity, ref_item, reference_path)
    if folder is None:
        model = embedded.identity
        hits = store.search(model, ref_item["embedding"], max(args.top_k, 1), metric.name, exclude={reference.sha256})
        found = [s for s, _ in hits]
        frame = rank_stored(hits, store.get_many(model, found), store.paths(model, found), metric)
    else:
        frame = rank_files(files, reference, embedded, metric)
    top = ref_item["predictions"][0]
    print(f"reference: {reference_path}  ->  {top['label']} ({top['probability']:.3f})", file=sys.stderr)
    emit(frame, args, metric)
    if args.html:
        write_html(args.html, reference_path, ref_item, frame, metric, args.top_k)
    failed = int(frame["score"].isna().sum())
    print(
        f"ranked {int(frame['score'].notna().sum())}, skipped {len(others)} (not images), failed {failed}; "
        + embedded.said() + held_note(held),
        file=sys.stderr,
    )
    return 0


def report_seen(args, store, identity: dict, ref_item: dict, reference_path: Path) -> int:
    """--seen: the stored exact and near matches of the reference, without embedding anything else."""
    from client.commands.tables import seen_frame
    from client.duplicates import seen_matches, thresholds_for

    found = seen_frame(seen_matches(store, identity, ref_item, reference_path, thresholds_for(identity["architecture"])))
    write_frame(args, found)
    tiers = ", ".join(f"{n} {tier}" for tier, n in found["tier"].value_counts().items())
    print(f"{reference_path}: {'seen: ' + tiers if tiers else 'not seen before'}", file=sys.stderr)
    return 0
