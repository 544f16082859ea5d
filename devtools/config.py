"""The repository's two server config files, read as TorchServe reads them, so harness code never repeats a value."""

from __future__ import annotations

from functools import cache
from typing import Any

import yaml

from client.server_files import read_properties
from devtools import REPO

SERVER_CONFIG = REPO / "config" / "config.properties"
MODEL_CONFIG = REPO / "config" / "model-config.yaml"


@cache
def server_settings() -> dict[str, str]:
    """config/config.properties as key -> value, read as the readiness check reads it."""
    return read_properties(SERVER_CONFIG)


@cache
def handler_settings() -> dict[str, Any]:
    """The ``handler:`` section of config/model-config.yaml."""
    return dict(yaml.safe_load(MODEL_CONFIG.read_text())["handler"])
