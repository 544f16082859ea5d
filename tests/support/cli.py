"""The client's commands run as a user runs them (``python client/rank.py ...`` in a subprocess), and their JSON."""

from __future__ import annotations

import io
import subprocess
import sys
from pathlib import Path

import pandas as pd

from devtools import REPO
from devtools.torchserve import TorchServe
from tests.conftest import LITE


def client_command(tool: str, *args: str, server: TorchServe | None = None, model: str = LITE) -> list[str]:
    """``python client/<tool>.py ARGS``; with ``server``: its address, ``model``, its key file and --quiet first."""
    command = [sys.executable, str(REPO / "client" / f"{tool}.py")]
    if server is not None:
        command += ["--url", server.url, "--model", model, "--token-file", str(server.key_file), "--quiet"]
    return command + list(args)


def run_client(
    tool: str, *args: str, server: TorchServe | None = None, model: str = LITE, cwd: Path = REPO,
    env: dict[str, str] | None = None, timeout: float = 600,
) -> subprocess.CompletedProcess:  # fmt: skip
    """Runs ``client_command(tool, *args, ...)`` to its end; stdout and stderr captured as text."""
    command = client_command(tool, *args, server=server, model=model)
    return subprocess.run(command, cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout)


def json_frame(output: subprocess.CompletedProcess | str) -> pd.DataFrame:
    """The ``--format json`` rows a command printed; a finished command must have succeeded."""
    if isinstance(output, subprocess.CompletedProcess):
        assert output.returncode == 0, output.stderr
        output = output.stdout
    return pd.read_json(io.StringIO(output), orient="records")
