"""The files a TorchServe started by serve.sh leaves in the folder it ran from, read with the stdlib only.

``key_file.json`` (TorchServe writes the keys there; it offers no way to set them) and
``logs/serving.properties`` (serve.sh's copy of the config it started TorchServe with,
addresses included). The readiness probe runs in the official container, which has no
``requests``, so this module and ``client.readiness`` import nothing beyond the stdlib.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

KEY_FILE = "key_file.json"
SERVING_CONFIG = Path("logs") / "serving.properties"
REPO_CONFIG = Path(__file__).resolve().parents[1] / "config" / "config.properties"


class ServerError(Exception):
    """The run cannot go on; the message says what to do."""


@dataclass(frozen=True)
class Keys:
    """The keys TorchServe made at its start."""

    inference: str
    management: str

    def __repr__(self) -> str:  # never in a log or a traceback
        return "Keys(inference=..., management=...)"


def read_keys(key_file: Path) -> Keys:
    """The keys in the ``key_file.json`` TorchServe writes in the folder it was started from."""
    try:
        document = json.loads(Path(key_file).read_text())
        return Keys(document["inference"]["key"], document["management"]["key"])
    except (ValueError, KeyError, TypeError):
        raise ServerError(f"{key_file} is not a TorchServe key file (no inference key in it)") from None


def read_properties(path: Path) -> dict[str, str]:
    """A config.properties file as key -> value (the last line of a key wins, as in Java's Properties)."""
    settings = {}
    for line in Path(path).read_text().splitlines():
        line = line.strip()
        if line and not line.startswith("#") and "=" in line:
            key, value = line.split("=", 1)
            settings[key.strip()] = value.strip()
    return settings


def serving_config(folder: Path) -> Path:
    """The config the server started from ``folder`` runs with: serve.sh's copy, else the repository's."""
    copy = Path(folder) / SERVING_CONFIG
    return copy if copy.is_file() else REPO_CONFIG
