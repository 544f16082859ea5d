"""The edge proxy and the local balancer agree with TorchServe's config, and the client reads a shared key."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
import yaml

from client.server_files import ServerError
from client.torchserve_client import read_token
from devtools import REPO
from devtools.config import server_settings

TEMPLATES = [REPO / "deploy" / "edge" / "edge.conf.template", REPO / "deploy" / "local" / "balancer.conf.template"]
SIZES = {"k": 2**10, "m": 2**20, "g": 2**30, "": 1}


def directive(template: Path, name: str) -> list[str]:
    return re.findall(rf"^\s*{name}\s+([^;]+);", template.read_text(), re.MULTILINE)


@pytest.mark.parametrize("template", TEMPLATES, ids=lambda t: t.parent.name)
def test_the_body_size_limit_is_max_request_size(template):
    [limit] = directive(template, "client_max_body_size")
    number, unit = re.fullmatch(r"(\d+)([kmg]?)", limit.lower()).groups()
    assert int(number) * SIZES[unit] == int(server_settings()["max_request_size"])


@pytest.mark.parametrize("template", TEMPLATES, ids=lambda t: t.parent.name)
def test_the_proxy_waits_ten_seconds_longer_than_torchserve(template):
    response_timeout = yaml.safe_load((REPO / "config" / "model-config.yaml").read_text())["responseTimeout"]
    assert directive(template, "proxy_read_timeout") == [f"{response_timeout + 10}s"]


def test_the_edge_forwards_only_predictions_and_never_logs_a_header():
    edge = TEMPLATES[0].read_text()
    assert directive(TEMPLATES[0], "proxy_pass") == ["http://torchserve"]
    assert re.findall(r"^\s*location\s+(\S+)", edge, re.MULTILINE) == ["/predictions/", "/", "@too_large",
                                                                        "@torchserve_down"]  # fmt: skip
    assert "$http_authorization" not in "".join(directive(TEMPLATES[0], "log_format"))
    assert "~" not in "".join(re.findall(r"if \(([^)]*)\)", edge))  # an exact comparison, not a regex


def test_a_file_holding_only_the_shared_key_is_read_as_the_key(tmp_path: Path, monkeypatch):
    monkeypatch.delenv("IMGSIM_TOKEN", raising=False)
    secret = tmp_path / "key"
    secret.write_text("q0U8m-oCV3Wu0JvSmD9Vb4sU6v0S1WQ2m7sH4V7Xh2c=\n")  # as a mounted Secret or openssl writes it
    assert read_token(None, secret) == "q0U8m-oCV3Wu0JvSmD9Vb4sU6v0S1WQ2m7sH4V7Xh2c="
    keys = tmp_path / "key_file.json"
    keys.write_text(json.dumps({"inference": {"key": "i-key"}, "management": {"key": "m-key"}}))
    assert read_token(None, keys) == "i-key"
    for bad in ("", "two words\n"):
        secret.write_text(bad)
        with pytest.raises(ServerError, match="neither TorchServe's key_file.json nor a file holding one key"):
            read_token(None, secret)
