"""Keep a folder's store current: embed what is new or changed, forget what was deleted; no ranking.

Run it from cron, or with --watch to follow the folder as files arrive; rank.py --store and
dedup.py --store then answer from the store without walking the folder. A file written to
within the last --settle seconds is left for later, so a copy in progress is never embedded half done.
"""

from __future__ import annotations

import argparse
import json
import os
import queue
import signal
import sys
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass
from pathlib import Path

from client.commands.options import (
    STORE_NAME,
    add_common_args,
    check_common_args,
    make_client,
    show_notices,
    write_frame,
)  # fmt: skip
from client.reconcile import Applied, HashCache, Plan, Scope, apply, plan_folder, plan_paths
from client.scan import candidate_files
from client.settle import FileState, Settler
from client.store import EmbeddingStore, StoreError, open_store
from client.torchserve_client import ServerError
from client.watch import DEFAULT_POLL, PathEvents, start_observer, stop_observer, unwatched_folders

DEFAULT_SETTLE = 5.0  # seconds: outlasts a local copy's pauses between writes; raise it for slow network copies
DEFAULT_RESCAN = 3600.0  # seconds between a watch's full passes, which catch what events missed
GONE_HOLD = 10.0  # seconds past --settle that a vanished path may wait for the other end of its move
FIRST_BACKOFF, LAST_BACKOFF = 5.0, 300.0  # seconds a watch waits before asking an unusable server again

EXAMPLES = f"""examples:
  python client/index.py ~/photos                  # one pass: embed new and changed, forget deleted
  python client/index.py ~/photos --watch          # then keep following the folder (Ctrl-C or SIGTERM ends it)
  python client/index.py /mnt/nas/photos --watch --poll 30   # network shares send no inotify events: poll
  python client/index.py ~/photos --format json    # the pass's counts as JSON on stdout
  crontab: */15 * * * * cd ~/imgsim && .venv/bin/python client/index.py ~/photos --quiet

Then answer from the store, without walking the folder:
  python client/rank.py --store ~/photos/{STORE_NAME} --ref_image query.jpg
  python client/dedup.py --store ~/photos/{STORE_NAME}

The store is FOLDER/{STORE_NAME} unless --store names another SQLite file or a postgresql:// URL.
Exit status: 0 done (files the server could not decode are warnings), 1 not done (the folder is empty
or gone, see the message), 2 the server or the store is unusable; a pass stopped by Ctrl-C or SIGTERM
keeps every batch it finished, and the next pass goes on from there. A watch ends with 0 on either.
"""


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        prog="index.py", description=__doc__.splitlines()[0], epilog=EXAMPLES,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )  # fmt: skip
    p.add_argument("folder", type=Path, help="the folder to keep indexed")
    p.add_argument("--no-recursive", dest="recursive", action="store_false", help="leave subfolders out")
    p.add_argument("--settle", type=float, default=DEFAULT_SETTLE, metavar="SECONDS",
                   help=f"embed a file only once unchanged this long (default {DEFAULT_SETTLE:g})")  # fmt: skip
    p.add_argument("--watch", action="store_true", help="after the pass, keep the store current as files change")
    p.add_argument("--poll", type=float, nargs="?", const=DEFAULT_POLL, metavar="SECONDS",
                   help=f"with --watch: poll the tree, not inotify (network shares; default every {DEFAULT_POLL:g} s)")  # fmt: skip
    p.add_argument("--rescan", type=float, default=DEFAULT_RESCAN, metavar="SECONDS",
                   help=f"with --watch: a full pass this often, 0 never (default {DEFAULT_RESCAN:g})")  # fmt: skip
    p.add_argument("--allow-empty", action="store_true",
                   help="forget everything known in the folder when it is empty (refused by default: unmounted?)")  # fmt: skip
    add_common_args(p)
    args = p.parse_args(argv)
    check_common_args(p, args)
    if args.no_store:
        p.error("index.py keeps a store current; drop --no-store")
    if not args.folder.is_dir():
        p.error(f"{args.folder} is not a folder")
    if args.settle < 0:
        p.error("--settle must be 0 or more seconds")
    if args.poll is not None and not args.watch:
        p.error("--poll says how to --watch; add --watch")
    if args.poll is not None and args.poll <= 0:
        p.error("--poll must be more than 0 seconds")
    if args.rescan < 0:
        p.error("--rescan must be 0 (never) or more seconds")
    return args


@dataclass
class Tally:
    """What one pass (or one round of a watch) did: the summary line, and the --format json/csv record."""

    new: int = 0
    changed: int = 0
    deleted: int = 0
    unchanged: int = 0
    changing: int = 0  # still being written: left for later
    unreadable: int = 0
    sent: int = 0  # to the server
    failed: int = 0  # the server could not embed them (warned about above)
    dropped: int = 0  # contents forgotten with their vectors
    read: int = 0  # files whose bytes were read (hashed)
    stat_only: int = 0  # files known unchanged from their stat alone

    @classmethod
    def of(cls, plan: Plan, applied: Applied) -> Tally:
        return cls(
            len(plan.new), len(plan.changed), len(plan.deleted), len(plan.unchanged), len(plan.changing),
            len(plan.unreadable), applied.sent, applied.failed, applied.dropped, plan.read, plan.stat_only,
        )  # fmt: skip

    def line(self) -> str:
        return (
            f"{self.new} new, {self.changed} changed, {self.deleted} deleted, {self.unchanged} unchanged, "
            f"{self.changing} still changing (left for later){f', {self.unreadable} unreadable' if self.unreadable else ''}; "
            f"sent {self.sent} to the server, {self.failed} failed"
        )

    def brief(self) -> str:
        """Only what happened, for a watch's rounds."""
        said = [f"{n} {what}" for what, n in
                (("new", self.new), ("changed", self.changed), ("deleted", self.deleted), ("failed", self.failed)) if n]  # fmt: skip
        return ", ".join(said) + f"; sent {self.sent} to the server"


class Interrupted(Exception):
    def __init__(self, signum: int) -> None:
        super().__init__(signal.Signals(signum).name)
        self.signum = signum


class Stopper:
    """Ctrl-C and SIGTERM. Inside ``abortable()`` they raise Interrupted at once (every finished batch is already
    committed); elsewhere they only set ``event``, which a watch checks between rounds."""

    def __init__(self) -> None:
        self.event = threading.Event()
        self.signum = signal.SIGTERM
        self._abortable = False

    @contextmanager
    def installed(self) -> Iterator[None]:
        previous = {signum: signal.signal(signum, self._handle) for signum in (signal.SIGTERM, signal.SIGINT)}
        try:
            yield
        finally:
            for signum, handler in previous.items():
                signal.signal(signum, handler)

    def _handle(self, signum: int, frame: object) -> None:
        self.signum = signum
        self.event.set()
        if self._abortable:
            raise Interrupted(signum)

    @contextmanager
    def abortable(self) -> Iterator[None]:
        if self.event.is_set():
            raise Interrupted(self.signum)
        self._abortable = True
        try:
            yield
        finally:
            self._abortable = False


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    show_notices("index.py")
    root = args.folder.expanduser().resolve()
    location = args.store or str(root / STORE_NAME)
    scope = Scope.of(root, args.recursive, location)
    stopper = Stopper()
    try:
        with stopper.installed():
            with stopper.abortable():
                store = open_store(location)
            try:
                if args.watch:
                    return Watch(args, scope, store, stopper).run()
                with stopper.abortable():
                    tally = one_pass(args, scope, store)
            finally:
                store.close()
    except (ServerError, StoreError) as exc:
        print(f"index.py: {exc}", file=sys.stderr)
        return 2
    except Interrupted as exc:
        print(f"index.py: stopped by {exc}; every batch embedded before that is kept: rerun to go on", file=sys.stderr)
        return 128 + exc.signum
    if tally is None:
        return 1
    print(f"index.py: {root}: {tally.line()}", file=sys.stderr)
    if args.format != "table":
        import pandas as pd

        write_frame(args, pd.DataFrame([{"folder": str(root), **asdict(tally)}]))
    return 0


def one_pass(
    args: argparse.Namespace, scope: Scope, store: EmbeddingStore, hashes: HashCache | None = None,
    on_plan: Callable[[Plan], None] | None = None,
) -> Tally | None:  # fmt: skip
    """Scan, compare, forget, embed. None when the folder is empty but the store knows files in it (refused)."""
    known = store.known_paths(str(scope.root))
    plan = plan_folder(scope, known, settle=args.settle, now=time.time(), hashes=hashes, progress=not args.quiet,
                       store=store, rehash=args.rehash)  # fmt: skip
    print(f"index.py: {scope.root}: {plan.scan_line()}", file=sys.stderr, flush=True)
    if on_plan:
        on_plan(plan)
    if plan.deleted and not args.allow_empty and not any(scope.root.iterdir()):
        print(
            f"index.py: {scope.root} is empty, but the store knows {len(plan.deleted)} files in it: forgetting none "
            "(an unmounted drive?). If it really is empty now, rerun with --allow-empty",
            file=sys.stderr,
        )
        return None
    applied = apply(plan, store, make_client(args), args.batch_size, progress=not args.quiet,
                    retry_failed=args.retry_failed)  # fmt: skip
    return Tally.of(plan, applied)


class Watch:
    """The first pass, then rounds: events mark paths, settled ones are embedded, vanished ones forgotten."""

    def __init__(self, args: argparse.Namespace, scope: Scope, store: EmbeddingStore, stopper: Stopper) -> None:
        self.args, self.scope, self.store, self.stopper = args, scope, store, stopper
        self.events: queue.SimpleQueue[str] = queue.SimpleQueue()
        self.settler = Settler(args.settle)
        self.hashes: HashCache = {}  # a rescan rehashes only what stat says changed
        self.tick = min(1.0, max(0.1, args.settle / 4))
        self.gone: dict[str, float] = {}  # vanished paths not yet forgotten -> when they were found gone
        self.backoff = 0.0
        self.wrote_csv_header = False

    def _on_event(self, path: str, is_directory: bool) -> None:  # the observer's thread
        if self.scope.wants(path, is_directory):
            self.events.put(path)

    def run(self) -> int:
        # watching starts before the first pass, so nothing that arrives during it is missed
        observer, how = start_observer(
            self.scope.root, PathEvents(self._on_event), self.scope.recursive, self.args.poll
        )
        try:
            self._say(
                f"watching {self.scope.root} ({how}); a file is embedded once unchanged for {self.args.settle:g} s"
            )
            rescan_at = 0.0  # due now: the first pass is a rescan
            retry_at = 0.0
            while not self.stopper.event.is_set():
                if not self.scope.root.is_dir():
                    self._say(f"{self.scope.root} is gone (unmounted?); stopping, nothing forgotten")
                    return 1
                while not self.events.empty():
                    self.settler.mark(self.events.get())
                now = time.monotonic()
                if now >= retry_at:
                    rescan = now >= rescan_at
                    ok = self._round(rescan)
                    if ok and rescan:
                        rescan_at = now + self.args.rescan if self.args.rescan else float("inf")
                        if how == "inotify" and unwatched_folders(observer, self.scope.root, self.scope.recursive):
                            stop_observer(observer)  # a folder made since could not be watched: poll from now on
                            observer, how = start_observer(self.scope.root, PathEvents(self._on_event),
                                                           self.scope.recursive, DEFAULT_POLL)  # fmt: skip
                            self._say(f"watching {self.scope.root} ({how})")
                    retry_at = 0.0 if ok else time.monotonic() + self.backoff
                self.stopper.event.wait(self.tick)
        except Interrupted:
            pass
        finally:
            stop_observer(observer)
        self._say("stopped")
        return 0

    def _round(self, rescan: bool) -> bool:
        """One full pass (``rescan``) or one look at the marked paths; False when the server was unusable."""
        plan: Plan | None = None
        tally: Tally | None = None
        try:
            with self.stopper.abortable():
                if rescan:
                    tally = one_pass(self.args, self.scope, self.store, self.hashes, on_plan=self._keep)
            if rescan:  # reported outside abortable(): a signal now only ends the watch after this round's line
                if tally is not None:
                    self._report(tally, always=True)
                return True
            with self.stopper.abortable():
                settled = self.settler.poll()
                for folder in settled.folders:  # moved or copied in: look at what it holds
                    for path in candidate_files(folder, self.scope.recursive)[0]:
                        if self.scope.wants(path, False) and path not in self.settler:
                            self.settler.mark(path)
                now = time.monotonic()
                for path in settled.gone:
                    self.gone.setdefault(path, now)
                # what vanished waits while other paths settle (up to a limit): when they are the other ends of
                # moves (a folder moved in pieces), forgetting first would drop vectors that are about to be reused
                hold = len(self.settler) and all(now - t < self.args.settle + GONE_HOLD for t in self.gone.values())
                gone = [] if hold else list(self.gone)
                if not (settled.ready or gone):
                    return True
                known = self.store.known_paths(str(self.scope.root))
                plan = plan_paths(self.scope, settled.ready, gone, known, self.hashes)
                for path in gone:
                    del self.gone[path]
                self._keep(plan)
                # a watch sends a refused file again only when it changes (new bytes: a new sha256)
                applied = apply(plan, self.store, make_client(self.args), self.args.batch_size, progress=False)
            self._report(Tally.of(plan, applied))
            for f in plan.files:  # written to (or deleted) since it settled: look again
                if _state(f.path) != settled.ready[f.path]:
                    self.settler.mark(f.path)
        except (ServerError, OSError) as exc:
            self.backoff = min(max(self.backoff * 2, FIRST_BACKOFF), LAST_BACKOFF)
            waiting = len(self.settler) + (len(plan.files) if plan else 0)
            self._say(f"{exc}\n  {waiting} files wait; trying again in {self.backoff:g} s (the watch goes on)")
            if plan:
                for f in plan.new + plan.changed:
                    self.settler.mark(f.path)
            return False
        self.backoff = 0.0
        return True

    def _keep(self, plan: Plan) -> None:
        for path in plan.changing:  # still being written: the watch embeds it once it settles
            self.settler.mark(path)

    def _report(self, tally: Tally, always: bool = False) -> None:
        if always:
            self._say(tally.line())
        elif tally.new or tally.changed or tally.deleted or tally.sent or tally.failed:
            self._say(tally.brief())
        else:
            return
        record = {"time": time.strftime("%Y-%m-%dT%H:%M:%S"), "folder": str(self.scope.root), **asdict(tally)}
        if self.args.format == "json":
            self._write(json.dumps(record) + "\n")
        elif self.args.format == "csv":
            header = "" if self.wrote_csv_header else ",".join(record) + "\n"
            self.wrote_csv_header = True
            self._write(header + ",".join(str(v) for v in record.values()) + "\n")

    def _write(self, text: str) -> None:
        if self.args.output:
            with open(self.args.output, "a", encoding="utf-8") as out:
                out.write(text)
        else:
            sys.stdout.write(text)
            sys.stdout.flush()

    @staticmethod
    def _say(message: str) -> None:
        print(f"index.py: {time.strftime('%H:%M:%S')} {message}", file=sys.stderr, flush=True)


def _state(path: str) -> FileState | None:
    try:
        return FileState.of(os.stat(path))
    except OSError:
        return None
