"""When a file being written is done: its size and mtime have not changed for ``settle`` seconds.

A copy in progress (a camera card, a sync tool, a browser download) grows for a while, and
embedding it then would store the vector of half a photo under the sha256 of half a file.
``index.py --watch`` marks a path on every event and embeds it once it has looked the same
for ``settle`` seconds. No I/O but ``stat`` and no sleeping here: the clock and ``stat`` are
parameters, so the rules are tested without waiting.
"""

from __future__ import annotations

import os
import stat
import time
from collections.abc import Callable
from dataclasses import dataclass, field


@dataclass(frozen=True)
class FileState:
    """What ``stat`` says about a file's content: a write changes the size or the mtime, a replacement the inode."""

    size: int
    mtime_ns: int
    inode: tuple[int, int]  # (device, inode)

    @classmethod
    def of(cls, st: os.stat_result) -> FileState:
        return cls(st.st_size, st.st_mtime_ns, (st.st_dev, st.st_ino))


@dataclass
class Settled:
    """What one look at the marked paths found."""

    ready: dict[str, FileState] = field(default_factory=dict)  # files unchanged for ``settle`` seconds
    gone: list[str] = field(default_factory=list)  # nothing there for ``settle`` seconds (deleted, moved away)
    folders: list[str] = field(default_factory=list)  # a folder is there now (created, moved in): list it

    def __bool__(self) -> bool:
        return bool(self.ready or self.gone or self.folders)


ABSENT = "absent"  # the state of a path with nothing there


@dataclass
class _Pending:
    state: FileState | str | None  # as last seen (or ABSENT); None until the first look
    since: float  # clock time since which it has looked like ``state``


class Settler:
    """Paths marked by events, each handed back once: ready (settled), gone, or a folder.

    A new event for a marked path restarts its wait, even when ``stat`` looks the same: a
    filesystem with coarse mtimes (FAT: 2 s) can hide a same-size rewrite from ``stat`` alone.
    Absence settles too: a file saved by delete-and-recreate is changed, not gone, and the two
    ends of a rename, first looked at together, are handed back together (so the content that
    moved keeps its vector).
    """

    def __init__(
        self, settle: float, clock: Callable[[], float] = time.monotonic,
        stat_path: Callable[[str], os.stat_result] = os.stat,
    ) -> None:  # fmt: skip
        if settle < 0:
            raise ValueError(f"settle must be >= 0 seconds, got {settle}")
        self.settle = settle
        self._clock = clock
        self._stat = stat_path
        self._pending: dict[str, _Pending] = {}

    def mark(self, path: str) -> None:
        """Something happened at ``path``: look again, and wait ``settle`` seconds more before it is ready."""
        previous = self._pending.get(path)
        self._pending[path] = _Pending(previous.state if previous else None, self._clock())

    def poll(self) -> Settled:
        """Looks at every marked path once; what it hands back is no longer marked."""
        now = self._clock()
        found = Settled()
        for path, pending in list(self._pending.items()):
            state: FileState | str
            try:
                st = self._stat(path)
            except (FileNotFoundError, NotADirectoryError):
                state = ABSENT
            except OSError:
                continue  # unreadable for now (permissions being set?): look again next time
            else:
                if stat.S_ISDIR(st.st_mode):
                    found.folders.append(path)
                    del self._pending[path]
                    continue
                if not stat.S_ISREG(st.st_mode):
                    del self._pending[path]  # a fifo or a socket is never an image
                    continue
                state = FileState.of(st)
            if state != pending.state:
                pending.state, pending.since = state, now
            elif now - pending.since >= self.settle:
                if isinstance(state, FileState):
                    found.ready[path] = state
                else:
                    found.gone.append(path)
                del self._pending[path]
        return found

    def __len__(self) -> int:
        return len(self._pending)

    def __contains__(self, path: object) -> bool:
        return path in self._pending
