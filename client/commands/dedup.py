"""Find duplicate images: identical files (exact), edited copies (near) and, when asked, similar photos.

Embeddings come from the server once and are remembered in the store, so a rerun
over the same folder sends nothing. Each group says why its members belong together;
client/duplicates/ has the rules and docs/DEDUP.md how they were calibrated. Acting on
the groups (--move-to, --trash, --undo, --not-duplicates) is wired in dedup_actions.py.
"""

from __future__ import annotations

import argparse
import os
import resource
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd

from client.commands import dedup_actions as actions
from client.commands import html_report as report
from client.commands.options import (
    STORE_NAME,
    add_common_args,
    check_common_args,
    make_client,
    show_notices,
    write_frame,
)  # fmt: skip
from client.commands.tables import groups_frame
from client.duplicates import TIERS, Content, Group, Thresholds, build_groups, content_links, thresholds_for
from client.duplicates.ann import ANN_FROM, SEARCHES
from client.duplicates.plan import DEFAULT_KEEP, KEEP_RULES
from client.embedding import embed_files
from client.moves import MANIFEST_NAME
from client.scan import ImageFile, candidate_files, held_note, outside_move_folders, scan_files
from client.store import EmbeddingStore, StoreError, open_store
from client.torchserve_client import ServerError

EXAMPLES = f"""examples:
  python client/dedup.py ~/photos                          # groups, largest first
  python client/dedup.py ~/photos --format csv --output dupes.csv
  python client/dedup.py ~/photos --html dupes.html         # thumbnails per group
  python client/dedup.py ~/photos --similar                 # also: same subject, another photo
  python client/dedup.py --store ~/photos/{STORE_NAME}   # everything stored, no server needed
  python client/dedup.py ~/photos --move-to ~/dupes --dry-run   # the plan: which copy stays, which go
  python client/dedup.py ~/photos --move-to ~/dupes        # move them (manifest first: ~/dupes/{MANIFEST_NAME})
  python client/dedup.py --undo ~/dupes                    # ... and put every one back
  python client/dedup.py ~/photos --trash --keep oldest    # to the desktop trash instead, keeping the oldest
  python client/dedup.py ~/photos --not-duplicates a.jpg b.jpg   # never group these two again

Tiers: exact = identical bytes; near = the same photo after edits (crop, rescale,
re-encode, brightness, colour, flip, small rotation, caption); similar (--similar) =
same subject, another photo. Thresholds are calibrated per model (docs/DEDUP.md).
Subfolders are included unless --no-recursive. The store is FOLDER/{STORE_NAME} unless
--store names another SQLite file or a postgresql:// URL.

Acting: one file per group is kept (--keep: most pixels, then the largest file, then the
oldest, by default); the others are moved into DIR at the same relative paths, or trashed.
Only exact and near groups are acted on unless --move-tiers names similar. A file that
changed since it was scanned is skipped; nothing is ever overwritten or deleted. A folder
holding {MANIFEST_NAME} is left out of every scan.
"""
HTML_GROUPS = 200


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        prog="dedup.py", description=__doc__.splitlines()[0], epilog=EXAMPLES,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )  # fmt: skip
    p.add_argument("folder", nargs="?", type=Path, help="folder to search (or none, with --store: all it holds)")
    p.add_argument("--no-recursive", dest="recursive", action="store_false", help="leave subfolders out")
    p.add_argument("--similar", action="store_true", help="also group different photos of the same subject")
    p.add_argument("--near-threshold", type=float, help="cosine that alone makes a near duplicate")
    p.add_argument("--near-low", type=float, help="lower cosine that makes one when the pHashes agree")
    p.add_argument("--hash-bits", type=int, help="most differing pHash bits (of 64) in that band")
    p.add_argument("--similar-threshold", type=float, help="cosine for --similar")
    p.add_argument("--no-hash", action="store_true", help="cosine only: never read the files for a pHash")
    p.add_argument("--search", choices=SEARCHES, default="auto",
                   help=f"how pairs are found: exact scan, or an ANN index whose pairs are scored exactly "
                        f"(default auto: ann from {ANN_FROM} contents)")  # fmt: skip
    add_common_args(p)
    p.add_argument("--html", type=Path, help="also write an HTML page with thumbnails per group")
    p.add_argument("--html-groups", type=int, default=HTML_GROUPS, help=f"groups on that page (default {HTML_GROUPS})")
    act = p.add_argument_group("acting on the groups (nothing is ever deleted)")
    act.add_argument("--move-to", type=Path, metavar="DIR", help="move all but the kept file of each group into DIR")
    act.add_argument("--trash", action="store_true", help="send them to the desktop trash instead")
    act.add_argument("--undo", type=Path, metavar="DIR", help="move back everything DIR's manifest says was moved")
    act.add_argument("--keep", choices=KEEP_RULES, default=DEFAULT_KEEP,
                     help="which file of a group stays (default pixels: most pixels, then largest, then oldest)")  # fmt: skip
    act.add_argument("--move-tiers", default="exact,near", type=lambda v: [t.strip() for t in v.split(",") if t.strip()],
                     help="tiers of the groups acted on (default exact,near; similar needs --similar too)")  # fmt: skip
    act.add_argument("--dry-run", action="store_true", help="print the plan (or the undo) and touch nothing")
    act.add_argument("--not-duplicates", nargs=2, action="append", metavar=("A", "B"),
                     help="remember in the store that files A and B are not duplicates (no server needed)")  # fmt: skip
    args = p.parse_args(argv)
    check_common_args(p, args)
    _check_actions(p, args)
    if args.folder is None and args.store is None and not args.undo:
        p.error("give a folder, or --store to search everything a store holds")
    if args.folder is not None and not args.folder.is_dir():
        p.error(f"{args.folder} is not a folder")
    return args


def _check_actions(p: argparse.ArgumentParser, args: argparse.Namespace) -> None:
    chosen = [flag for flag, on in (("--move-to", args.move_to), ("--trash", args.trash), ("--undo", args.undo),
                                    ("--not-duplicates", args.not_duplicates)) if on]  # fmt: skip
    if len(chosen) > 1:
        p.error(f"{' and '.join(chosen)} exclude each other: one action per run")
    if args.dry_run and not (args.move_to or args.trash or args.undo):
        p.error("--dry-run goes with --move-to DIR, --trash or --undo DIR")
    unknown = [t for t in args.move_tiers if t not in TIERS]
    if unknown or not args.move_tiers:
        p.error(f"--move-tiers takes tiers among {','.join(TIERS)}, not {','.join(unknown) or 'nothing'}")
    if "similar" in args.move_tiers and not args.similar:
        p.error("--move-tiers similar needs --similar (similar groups are only found when asked)")
    if (args.move_to or args.trash) and args.folder is None:
        p.error(f"{chosen[0]} needs a FOLDER: files are moved with their paths inside it")
    if args.move_to and args.folder is not None:
        folder, dest = args.folder.resolve(), args.move_to.resolve()
        if dest == folder or dest in folder.parents:
            p.error(f"--move-to {args.move_to} is {args.folder} or a folder above it: give another folder")
    if args.not_duplicates and args.folder is None and args.store is None:
        p.error("--not-duplicates needs a FOLDER (its store) or --store")
    if args.not_duplicates and args.no_store:
        p.error("--not-duplicates is remembered in the store: drop --no-store")


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    show_notices("dedup.py")
    if args.undo:
        return actions.run_undo(args)
    if args.not_duplicates:
        return actions.mark_not_duplicates(args)
    if args.folder is not None:
        args.folder = args.folder.resolve()  # the store records resolved paths, as index.py does
    started = time.perf_counter()
    try:
        store = None if args.no_store else open_store(args.store or args.folder / STORE_NAME)
        try:
            if args.folder is None:
                found = from_store(args, store)
            else:
                found = from_folder(args, store)
            if found is None:
                return 2
            contents, vectors, architecture, note = found
            apart = store.not_duplicates() if store else set()
        finally:
            if store:
                store.close()
    except (ServerError, StoreError) as exc:
        print(f"dedup.py: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("dedup.py: interrupted; what was hashed and embedded before that is kept: rerun to go on",
              file=sys.stderr)  # fmt: skip
        return 130
    t = thresholds_for(
        architecture, near=args.near_threshold, near_low=args.near_low, hash_bits=args.hash_bits,
        similar=args.similar_threshold,
    )  # fmt: skip
    if args.no_hash:
        t = Thresholds(t.near, t.near, t.hash_bits, t.similar, t.calibrated)
    if not t.calibrated and args.near_threshold is None:
        print(
            f"dedup.py: warning: no calibrated thresholds for {architecture}; using a cautious guess "
            f"(near {t.near}, or {t.near_low} with pHash <= {t.hash_bits} bits; similar {t.similar}). "
            f"Calibrate with: python bench/dedup_calibration.py --arch {architecture} --weights FILE",
            file=sys.stderr,
        )
    if args.search == "ann" or (args.search == "auto" and len(contents) >= ANN_FROM):
        # measured by bench/ann_pairs.py (docs/DEDUP.md): recall 0.995 at 100,000, lower towards a million
        print(f"dedup.py: {len(contents)} contents: pairs come from an ANN index and are scored exactly; it can "
              "miss a few pairs (--search exact scans every pair, O(N^2))", file=sys.stderr)  # fmt: skip
    grouping = time.perf_counter()
    links = content_links(contents, vectors, t, similar=args.similar, search=args.search, progress=not args.quiet)
    groups = build_groups(contents, links, apart)
    grouped_s = time.perf_counter() - grouping
    if actions.acting(args):
        return actions.act(args, contents, links, apart, groups)
    frame = groups_frame(groups)
    emit(frame, args)
    if args.html:
        write_html(args.html, groups, args.html_groups, t)
    counts = {tier: sum(g.tier == tier for g in groups) for tier in ("exact", "near", "similar")}
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print(
        f"{sum(len(c.files) for c in contents)} files, {len(contents)} distinct; {len(groups)} groups "
        f"({', '.join(f'{n} {tier}' for tier, n in counts.items() if n or tier != 'similar')}) holding "
        f"{len(frame)} files; {note}; grouped in {grouped_s:.1f} s "
        f"({time.perf_counter() - started:.1f} s in all), peak memory {peak:.0f} MiB",
        file=sys.stderr,
    )
    return 0


Found = tuple[list[Content], np.ndarray, str, str]  # contents, their vectors, architecture, what was sent


def from_folder(args: argparse.Namespace, store: EmbeddingStore | None) -> Found | None:
    images, others = candidate_files(args.folder, args.recursive)  # args.folder is resolved (main)
    images, held = outside_move_folders(images, others, args.move_to)
    scanned = scan_files(images, args.folder, store, rehash=args.rehash, progress=not args.quiet)
    files = scanned.files
    print(scanned.line(), file=sys.stderr)
    if not files:
        print(f"dedup.py: no images in {args.folder}" + ("" if args.recursive else " (subfolders left out)"),
              file=sys.stderr)  # fmt: skip
        return None
    embedded = embed_files(files, make_client(args), store, args.batch_size, progress=not args.quiet,
                           retry_failed=args.retry_failed)  # fmt: skip
    if embedded.identity is None:
        print("dedup.py: no image could be embedded; see the warnings above", file=sys.stderr)
        return None
    by_sha: dict[str, list[ImageFile]] = {}
    for f in files:
        if f.sha256 in embedded:
            by_sha.setdefault(f.sha256, []).append(f)
    contents = [Content(sha, [(f.name, f.path) for f in group]) for sha, group in by_sha.items()]
    vectors = embedded.matrix([c.sha256 for c in contents])
    note = (f"skipped {len(others)} (not images), failed {len(embedded.errors)}; "
            + embedded.said() + held_note(held))  # fmt: skip
    return contents, vectors, embedded.identity["architecture"], note


def from_store(args: argparse.Namespace, store: EmbeddingStore) -> Found | None:
    """Everything the store holds for --model at --url, at the paths where it was seen that still exist."""
    identity = store.endpoint(args.url.rstrip("/"), args.model)
    if identity is None:
        known = ", ".join(m["model"] for m in store.models()) or "none"
        print(
            f"dedup.py: the store has no images of model {args.model!r} served at {args.url} (stored models: "
            f"{known}); run dedup.py or rank.py on a folder first, or pass the --url and --model used then",
            file=sys.stderr,
        )
        return None
    paths = store.paths(identity)
    existing = {sha: [p for p in ps if os.path.exists(p)] for sha, ps in paths.items()}
    existing = {sha: ps for sha, ps in existing.items() if ps}
    items = store.get_many(identity, existing)
    contents = [Content(sha, [(p, p) for p in ps]) for sha, ps in existing.items() if sha in items]
    vectors = _matrix([items[c.sha256]["embedding"] for c in contents], identity["embedding_dim"])
    note = f"{len(paths) - len(existing)} stored contents left out (no file at their paths); sent 0 to the server"
    return contents, vectors, identity["architecture"], note


def _matrix(rows: list[np.ndarray], dim: int) -> np.ndarray:
    matrix = np.empty((len(rows), dim), dtype=np.float32)
    for i, row in enumerate(rows):
        matrix[i] = row
    return matrix


def emit(frame: pd.DataFrame, args: argparse.Namespace) -> None:
    write_frame(args, frame)


def write_html(path: Path, groups: list[Group], limit: int, t: Thresholds) -> None:
    sections: list[tuple[str, list[report.Card]]] = []
    for n, group in enumerate(groups[:limit], start=1):
        cards = [report.Card(Path(m.path), m.file, [f"{m.tier}: {m.why}", f"tied to {m.match}"]) for m in group.members]
        sections.append((f"Group {n}: {group.tier}, {len(group.members)} files, weakest tie {group.score:.3f}", cards))
    if len(groups) > limit:
        sections.append((f"... and {len(groups) - limit} more groups (--html-groups, or the CSV, has them all)", []))
    title = (f"{len(groups)} duplicate groups (near: cosine >= {t.near}, or >= {t.near_low} with pHash "
             f"<= {t.hash_bits} bits)")  # fmt: skip
    report.write(path, title, sections)
