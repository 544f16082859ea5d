"""The repository's two server config files, read as TorchServe reads them, so harness code never repeats a value."""

from __future__ import annotations

from functools import cache
from typing import Any

import yaml

from devtools import REPO

SERVER_CONFIG = REPO / "config" / "config.properties"
MODEL_CONFIG = REPO / "config" / "model-config.yaml"


@cache
def server_settings() -> dict[str, str]:
    """config/config.properties as key -> value (the last line of a key wins, as in Java's Properties)."""
    settings = {}
    for line in SERVER_CONFIG.read_text().splitlines():
        line = line.strip()
        if line and not line.startswith("#") and "=" in line:
            key, value = line.split("=", 1)
            settings[key.strip()] = value.strip()
    return settings


@cache
def handler_settings() -> dict[str, Any]:
    """The ``handler:`` section of config/model-config.yaml."""
    return dict(yaml.safe_load(MODEL_CONFIG.read_text())["handler"])
