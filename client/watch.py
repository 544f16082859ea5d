"""Filesystem events for ``index.py --watch``: inotify through watchdog, or polling where inotify cannot watch.

Events only name paths; what a path now is (a settled file, a folder, nothing) is decided by
looking at it (``client.settle``), so a lost, doubled or reordered event costs a look, never a
wrong record. inotify gives up in ways that are easy to miss: a user's watches are capped
(``fs.inotify.max_user_watches``, one per folder) and so are the instances
(``fs.inotify.max_user_instances``); watchdog raises for the top folder but silently skips a
subfolder it cannot watch. ``start_observer`` checks that every folder is watched, and polls
the tree instead when not, saying which limit to raise.
"""

from __future__ import annotations

import errno
import logging
import os
import time
from collections.abc import Callable
from pathlib import Path

from watchdog.events import FileSystemEvent, FileSystemEventHandler
from watchdog.observers import Observer
from watchdog.observers.api import BaseObserver
from watchdog.observers.polling import PollingObserver

log = logging.getLogger(__name__)

DEFAULT_POLL = 10.0  # seconds between two polls of the tree: each one stats every file in it
# what to raise when inotify gives up with each of these (ENOSYS: no inotify at all, e.g. WSL 1, some sandboxes)
LIMITS = {
    errno.ENOSPC: "fs.inotify.max_user_watches",
    errno.EMFILE: "fs.inotify.max_user_instances",
    errno.ENOSYS: None,
}
_IGNORED_EVENTS = {"opened", "closed_no_write"}


class PathEvents(FileSystemEventHandler):
    """Hands each path an event names to ``sink(path, is_directory)``; a folder's "modified" (a file
    was added to it, or removed) is left out, since the file's own event says which."""

    def __init__(self, sink: Callable[[str, bool], None]) -> None:
        self._sink = sink

    def on_any_event(self, event: FileSystemEvent) -> None:
        if event.event_type in _IGNORED_EVENTS or (event.is_directory and event.event_type == "modified"):
            return
        for path in (event.src_path, event.dest_path):
            if path:
                self._sink(os.fsdecode(path), event.is_directory)


def start_observer(
    root: Path, handler: FileSystemEventHandler, recursive: bool, poll: float | None = None,
    inotify: Callable[[], BaseObserver] = Observer,
) -> tuple[BaseObserver, str]:  # fmt: skip
    """A started observer of ``root`` and how it watches ("inotify", or "polling every N s").
    inotify unless ``poll`` is given or inotify cannot watch the whole tree (logged once, with the fix)."""
    if poll is None:
        observer = inotify()
        try:
            observer.schedule(handler, str(root), recursive=recursive)
            observer.start()
        except OSError as exc:
            if exc.errno not in LIMITS:
                raise
            log.warning(_why_polling(exc.errno, f"inotify cannot watch {root}: {exc.strerror or exc}"))
        else:
            missing = unwatched_folders(observer, root, recursive)
            if not missing:
                return observer, "inotify"
            stop_observer(observer)
            log.warning(
                _why_polling(
                    errno.ENOSPC, f"inotify watches only part of {root}: {missing} of its folders could not be"
                )
            )
        poll = DEFAULT_POLL
    observer = PollingObserver(timeout=poll)
    observer.schedule(handler, str(root), recursive=recursive)
    observer.start()
    return observer, f"polling every {poll:g} s"


def stop_observer(observer: BaseObserver) -> None:
    observer.stop()
    observer.join(timeout=10)


def unwatched_folders(observer: BaseObserver, root: Path, recursive: bool) -> int:
    """How many folders of the tree have no inotify watch of this process (0 where that cannot be told:
    not Linux, or not an inotify observer). Counts, not inodes: an overlay filesystem's stat and its
    inotify name an inode differently. A folder made or removed meanwhile can skew one count: look twice."""
    if type(observer).__name__ != "InotifyObserver":
        return 0
    missing = 0
    for attempt in range(2):
        watches = inotify_watch_count()
        if watches is None:
            return 0
        # watchdog watches every folder os.walk visits (symlinks to folders are not followed by either)
        folders = sum(1 for _ in os.walk(root)) if recursive else 1
        missing = folders - watches
        if missing <= 0:
            return 0
        if attempt == 0:
            time.sleep(0.5)
    return missing


def inotify_watch_count() -> int | None:
    """The inotify watches this process holds (its inotify descriptors' lines in /proc/self/fdinfo); None
    without /proc."""
    try:
        fds = os.listdir("/proc/self/fd")
    except OSError:
        return None
    count = 0
    for fd in fds:
        try:
            if os.readlink(f"/proc/self/fd/{fd}") != "anon_inode:inotify":
                continue
            with open(f"/proc/self/fdinfo/{fd}") as info:
                count += sum(line.startswith("inotify ") for line in info)
        except OSError:
            continue
    return count


def _why_polling(err: int, what: str) -> str:
    limit = LIMITS.get(err)
    fix = (
        f"raise {limit} (now {_read_limit(limit)}), e.g. `sudo sysctl {limit}=524288` and a line in "
        "/etc/sysctl.d/, then restart; or pass --poll SECONDS to choose the interval"
        if limit
        else "this system has no inotify; pass --poll SECONDS to choose the interval"
    )
    return f"{what}. Polling the tree every {DEFAULT_POLL:g} s instead, which stats every file each time: {fix}"


def _read_limit(name: str) -> str:
    try:
        return Path("/proc/sys", *name.split(".")).read_text().strip()
    except OSError:
        return "unknown"
