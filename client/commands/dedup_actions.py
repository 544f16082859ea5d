"""What dedup.py does when asked to act on its groups: plan, move or trash, undo, and mark pairs not duplicates.

The rules live elsewhere (``client.duplicates.plan`` chooses, ``client.moves`` moves); this
module turns flags into calls, prints the plan like the other outputs and says on stderr
what was done and what was not. Exit codes: 0 all done, 1 some files were skipped, 2 nothing
could be done.
"""

from __future__ import annotations

import argparse
import os
import sys
from collections import Counter
from collections.abc import Sequence
from pathlib import Path

from client.commands import html_report as report
from client.commands.options import STORE_NAME, write_frame
from client.commands.tables import plan_frame, undo_frame
from client.duplicates import Content, Group, Link, build_groups
from client.duplicates.plan import Step, make_plan
from client.duplicates.thresholds import RANK
from client.moves import TRASH, TRASH_RECORD_NAME, Outcome, move_files, plan_moves, trash_files, undo
from client.scan import sha256_of
from client.store import StoreError, open_store

PROG = "dedup.py"


def acting(args: argparse.Namespace) -> bool:
    return bool(args.move_to or args.trash)


def act(args: argparse.Namespace, contents: Sequence[Content], links: Sequence[Link],
        apart: set[tuple[str, str]], shown: Sequence[Group]) -> int:  # fmt: skip
    """Plans (and unless --dry-run carries out) --move-to or --trash over the groups of the tiers named."""
    level = max(RANK[tier] for tier in args.move_tiers)
    groups = build_groups(contents, [link for link in links if RANK[link.tier] <= level], apart)
    steps = make_plan(groups, args.folder, args.keep)
    moves = plan_moves(steps, args.folder, None if args.trash else args.move_to)
    record: Path | None = None
    try:
        if args.dry_run:
            outcomes = [Outcome(m, "would trash" if args.trash else "would move") for m in moves]
        elif args.trash:
            record = args.folder / TRASH_RECORD_NAME
            outcomes = trash_files(moves, record)
        else:
            outcomes, record = move_files(moves, args.move_to)
    except (OSError, ValueError) as exc:  # the manifest cannot be read or written
        undo_hint = f"; {PROG} --undo {args.move_to} puts back whatever moved" if args.move_to else ""
        print(f"{PROG}: stopped: {exc}{undo_hint}", file=sys.stderr)
        return 2
    write_frame(args, plan_frame(steps, outcomes, args.trash))
    if args.html:
        write_plan_html(args.html, steps, outcomes, args.html_groups, args.trash)
    _summarise(args, steps, outcomes, record, shown)
    return 1 if any(not o.done for o in outcomes) else 0


def _summarise(args: argparse.Namespace, steps: Sequence[Step], outcomes: Sequence[Outcome], record: Path | None,
               shown: Sequence[Group]) -> None:  # fmt: skip
    """A line per skipped file, then one line: done, kept, skipped, left alone, where the record is, how to undo."""
    for o in outcomes:
        if not o.done:
            print(f"{PROG}: skipped {o.move.source}: {o.reason}", file=sys.stderr)
    done = [o for o in outcomes if o.done]
    verb = "trash" if args.trash else "move"
    verb = f"would {verb}" if args.dry_run else {"trash": "trashed", "move": "moved"}[verb]
    where = "" if args.trash else f" into {args.move_to}"
    parts = [f"{verb} {len(done)} files ({_size(sum(o.move.size for o in done))}){where}",
             f"kept {sum(s.action == 'keep' for s in steps)}", f"skipped {len(outcomes) - len(done)}"]  # fmt: skip
    planned = {s.path for s in steps}
    left_groups = [g for g in shown if any(m.path not in planned for m in g.members)]
    if left_groups:
        left = sum(m.path not in planned for g in left_groups for m in g.members)
        tiers = "/".join(sorted({g.tier for g in left_groups}))
        parts.append(f"{left} files of {tiers} groups left alone (--move-tiers names the tiers acted on)")
    if record:
        parts.append(f"record: {record}")
    if done and not args.dry_run:
        parts.append("the desktop trash can restore them" if args.trash else f"undo with: {PROG} --undo {args.move_to}")
    print(f"{PROG}: " + "; ".join(parts), file=sys.stderr)


def _size(n: int) -> str:
    return f"{n / 1e6:.1f} MB" if n >= 100_000 else f"{n / 1e3:.1f} kB"


def write_plan_html(path: Path, steps: Sequence[Step], outcomes: Sequence[Outcome], limit: int, trash: bool) -> None:
    """Per group: the kept file and each moved (or trashed) one with where it went, thumbnails from where they are now."""
    by_path = {str(o.move.source): o for o in outcomes}
    groups: dict[int, list[Step]] = {}
    for s in steps:
        groups.setdefault(s.group, []).append(s)
    sections: list[tuple[str, list[report.Card]]] = []
    for number, members in list(groups.items())[:limit]:
        cards = []
        for s in members:
            o = by_path.get(os.path.abspath(s.path))
            now, badge, lines = Path(s.path), s.action, [s.why]
            if o is not None:
                target = str(o.move.target) if o.move.target else TRASH
                badge = o.status.split()[-1] if o.done else "skipped"  # moved, trashed; "would move": move
                lines.append(f"-> {target}" if o.done else f"skipped: {o.reason}")
                if o.status == "moved" and o.move.target is not None:
                    now = o.move.target
            cards.append(report.Card(now, s.relative, lines, reference=s.action == "keep", badge=badge))
        kept = next((s.relative for s in members if s.action == "keep"), "none")
        sections.append((f"Group {number}: {members[0].tier}, {len(members)} files, keeping {kept}", cards))
    if len(groups) > limit:
        sections.append((f"... and {len(groups) - limit} more groups (--html-groups, or the CSV, has them all)", []))
    gone = sum(s.action == "go" for s in steps)
    report.write(path, f"Plan: keep one file of each of {len(groups)} groups, {'trash' if trash else 'move'} {gone}",
                 sections)  # fmt: skip


def run_undo(args: argparse.Namespace) -> int:
    """--undo DIR: moves back what DIR's manifest records, and says what it did."""
    try:
        outcomes, manifest = undo(args.undo, dry_run=args.dry_run)
    except (FileNotFoundError, ValueError) as exc:
        print(f"{PROG}: {exc}", file=sys.stderr)
        return 2
    write_frame(args, undo_frame(outcomes))
    for o in outcomes:
        if not o.done:
            print(f"{PROG}: not restored {o.move.source}: {o.reason}", file=sys.stderr)
    counts = Counter(o.status for o in outcomes)
    restored = [o for o in outcomes if o.status in ("restored", "would restore")]
    print(
        f"{PROG}: {'would restore' if args.dry_run else 'restored'} {len(restored)} files "
        f"({_size(sum(o.move.size for o in restored))}), {counts['in place']} already in place, "
        f"skipped {counts['skipped']}; manifest: {manifest}",
        file=sys.stderr,
    )
    return 1 if counts["skipped"] else 0


def mark_not_duplicates(args: argparse.Namespace) -> int:
    """--not-duplicates A B: remembers in the store that the two files' contents are not duplicates."""
    pairs, names = [], []
    for a, b in args.not_duplicates:
        found = [_find(name, args.folder) for name in (a, b)]
        missing = [name for name, path in zip((a, b), found, strict=True) if path is None]
        if missing:
            print(f"{PROG}: no file {' or '.join(missing)} (give paths, or names inside FOLDER)", file=sys.stderr)
            return 2
        sha_a, sha_b = (sha256_of(p) for p in found)  # type: ignore[arg-type]
        if sha_a == sha_b:
            print(f"{PROG}: {a} and {b} have identical bytes: they are exact duplicates and cannot be marked "
                  "as not duplicates (move one with --move-to instead)", file=sys.stderr)  # fmt: skip
            return 2
        pairs.append((sha_a, sha_b))
        names.append((a, b))
    location = args.store or args.folder / STORE_NAME
    try:
        with open_store(location) as store:
            store.mark_not_duplicates(pairs)
    except StoreError as exc:
        print(f"{PROG}: {exc}", file=sys.stderr)
        return 2
    for a, b in names:
        print(f"marked {a} and {b} as not duplicates in {location}: they will not share a group again")
    return 0


def _find(name: str, folder: Path | None) -> Path | None:
    """``name`` as given, else inside ``folder`` (the groups table names files relative to it)."""
    for path in (Path(name), *((folder / name,) if folder else ())):
        if path.is_file():
            return path
    return None
