"""Schema versions of the store, as numbered steps that upgrade an older store in place.

Both back ends share one version number; each step says in one line why it exists and
gives each back end its own change (or none, when only the other one changes). A new
store runs every step from 1; an older one runs the steps after its version, all inside
the caller's transaction, so a failed upgrade leaves the store exactly as it was.
A store newer than this client is refused: its tables may mean what this code cannot know.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Generic, TypeVar

from client.store.base import StoreError

logger = logging.getLogger(__name__)

SCHEMA_VERSION = 6

Conn = TypeVar("Conn")


@dataclass(frozen=True)
class Step(Generic[Conn]):
    version: int  # the schema version this step brings a store to
    reason: str  # one line: why the schema changed
    apply: Callable[[Conn], None] | None  # None: nothing changes in this back end


def parse_version(found: str | None, where: str) -> int:
    """The stored version as an int, or a StoreError naming what was found."""
    try:
        return int(found)  # type: ignore[arg-type]
    except (TypeError, ValueError):
        raise StoreError(f"{where} has an unreadable schema version {found!r}; it was not written by this client") from None


def upgrade(conn: Conn, steps: Sequence[Step[Conn]], found: int | None, where: str,
            record: Callable[[Conn, int], None]) -> int:  # fmt: skip
    """Runs the steps after ``found`` (None: a new, empty store) and records each new version.

    The caller holds the transaction (and any lock) around this call.
    """
    if [step.version for step in steps] != list(range(1, SCHEMA_VERSION + 1)):
        raise AssertionError(f"migration steps must be numbered 1..{SCHEMA_VERSION}: {[s.version for s in steps]}")
    if found is not None and found > SCHEMA_VERSION:
        raise StoreError(
            f"{where} uses store schema {found}, newer than this client's {SCHEMA_VERSION}; "
            "upgrade the client, or use another store location"
        )
    if found is not None and found < 1:
        raise StoreError(
            f"{where} uses store schema {found}, older than this client's {SCHEMA_VERSION}, and no migration "
            "exists; move it aside and rerun (embeddings are recomputed), or use the client version that wrote it"
        )
    current = 0 if found is None else found
    for step in steps[current:]:
        if found is not None:  # a new store is not "upgraded": it is made at the current version
            logger.info("%s: upgrading the store schema to version %d: %s", where, step.version, step.reason)
        if step.apply is not None:
            step.apply(conn)
        record(conn, step.version)
    return SCHEMA_VERSION
