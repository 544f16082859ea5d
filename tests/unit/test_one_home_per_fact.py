"""Facts that live in one place, and the few that a file format forces into two, checked to agree."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import pytest

from client.server_files import ServerError, read_keys
from client.torchserve_client import DEFAULT_URL, read_token
from devtools.config import handler_settings, server_settings
from imgsim import archive
from imgsim.models import REGISTRY, get_spec, imagenet_labels, sha256_file
from imgsim.pipeline import PipelineConfig


def test_the_handlers_defaults_are_the_model_configs_settings() -> None:
    settings = handler_settings()
    defaults = {field.name: field.default for field in dataclasses.fields(PipelineConfig)}
    assert defaults == settings
    assert PipelineConfig.from_mapping(settings) == PipelineConfig()


def test_every_architectures_default_engine_runs_on_a_cpu_and_names_its_measurement() -> None:
    from imgsim.engines import supported

    for spec in REGISTRY.values():
        assert supported(spec.engine, "cpu", spec.precision), spec.name
        assert spec.chosen_by, f"{spec.name}: the registry says which measurement chose its engine"
    assert PipelineConfig().engine == PipelineConfig().precision == "auto"  # the archive runs what the registry chose


def test_the_clients_default_address_is_the_servers_inference_address() -> None:
    assert DEFAULT_URL == server_settings()["inference_address"]


def test_packaged_weights_are_the_registrys_published_ones() -> None:
    shipped = {name: spec.packaged_weights() for name, spec in REGISTRY.items()}
    assert [name for name, path in shipped.items() if path is not None] == ["efficientnet_lite0"]
    lite = get_spec("efficientnet_lite0")
    assert lite.weights_url is None  # nothing to download: the package is the source
    assert sha256_file(shipped["efficientnet_lite0"]) == lite.weights_sha256_prefix
    assert shipped["efficientnet_lite0"].name == lite.weights_file


def test_labels_are_imagenets_1000_in_the_heads_order() -> None:
    labels = imagenet_labels()
    assert len(labels) == 1000 == get_spec("resnet18").num_classes
    assert labels[281] == "tabby" and labels[967] == "espresso"


def test_the_archive_identity_marks_a_lower_precision_in_the_version(tmp_path: Path) -> None:
    spec = get_spec("efficientnet_lite0")
    weights = spec.packaged_weights()
    staged = archive.stage(tmp_path / "extra", spec, weights, "57" * 32)
    contents = archive.read(staged)
    assert (contents.spec, contents.weights_sha256, contents.labels) == (spec, "57" * 32, imagenet_labels())
    assert contents.weights.read_bytes() == weights.read_bytes()
    assert (staged / "imgsim" / "archive.py").is_file()
    fp32, bf16 = archive.identity(spec, "57" * 32, "fp32"), archive.identity(spec, "57" * 32, "bf16")
    assert fp32["embedding_dim"] == 1280 and fp32["handler_version"] + "+bf16" == bf16["handler_version"]


def test_the_key_file_is_read_by_one_function_that_names_a_bad_file(tmp_path: Path, monkeypatch) -> None:
    keys = tmp_path / "key_file.json"
    keys.write_text(json.dumps({
        "management": {"key": "m-key", "expiration time": "2026-12-02T07:00:00Z"},
        "inference": {"key": "i-key", "expiration time": "2026-12-02T07:00:00Z"},
        "API": {"key": "api-key"},
    }))  # fmt: skip
    assert (read_keys(keys).inference, read_keys(keys).management) == ("i-key", "m-key")
    assert "i-key" not in repr(read_keys(keys))
    monkeypatch.delenv("IMGSIM_TOKEN", raising=False)
    assert read_token(None, keys) == "i-key"
    other = tmp_path / "config.json"
    other.write_text('{"inference": "not a key"}')
    with pytest.raises(ServerError, match=r"config\.json is not a TorchServe key file"):
        read_keys(other)
