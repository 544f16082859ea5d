"""The handler called through a real TorchServe Context, and the pieces behind it."""

from __future__ import annotations

import base64
import json
import zipfile
from pathlib import Path

import pytest
import torch
import torchvision
import yaml
from ts.context import Context, RequestProcessor
from ts.metrics.metric_cache_yaml_impl import MetricsCacheYamlImpl

from devtools.images import encode, photo
from imgsim.models import get_spec, load_model
from imgsim.payload import parse_request
from tests.conftest import LITE, RESNET

TS_METRICS = Path(torch.__file__).parent.parent / "ts" / "configs" / "metrics.yaml"


def unpack(mar: Path, into: Path) -> Path:
    with zipfile.ZipFile(mar) as archive:
        archive.extractall(into)
    return into


def make_context(model_dir: Path, name: str, batch: int) -> Context:
    manifest = json.loads((model_dir / "MAR-INF" / "MANIFEST.json").read_text())
    yaml_config = yaml.safe_load((model_dir / manifest["model"]["configFile"]).read_text())
    metrics = MetricsCacheYamlImpl(config_file_path=str(TS_METRICS))
    metrics.initialize_cache()
    return Context(name, str(model_dir), manifest, batch, None, "0.12.0", metrics=metrics, model_yaml_config=yaml_config)


def load_handler(model_store: Path, tmp_path: Path, name: str):
    import sys

    model_dir = unpack(model_store / f"{name}.mar", tmp_path / name)
    sys.path.insert(0, str(model_dir))  # as TorchServe does for the archive's files
    try:
        from embed_handler import EmbeddingHandler
    finally:
        sys.path.remove(str(model_dir))
    context = make_context(model_dir, name, 8)
    handler = EmbeddingHandler()
    handler.initialize(context)
    return handler, context


def call(handler, context, requests: list[dict]) -> list:
    context.request_processor = [RequestProcessor({}) for _ in requests]
    bodies = handler.handle(requests, context)
    return [(context.get_response_status(i)[0], json.loads(body)) for i, body in enumerate(bodies)]


@pytest.fixture(scope="module")
def lite(model_store, tmp_path_factory):
    return load_handler(model_store, tmp_path_factory.mktemp("lite"), LITE)


def test_bad_image_does_not_fail_its_batch(lite):
    handler, context = lite
    cat, coffee = encode(photo("cat.png"), "PNG"), encode(photo("coffee.jpg"), "JPEG")
    replies = call(handler, context, [
        {"a.png": cat, "broken.jpg": b"\xff\xd8\xff garbage", "c.jpg": coffee},
        {"body": cat},
        {"body": b"plain text, not an image"},
    ])  # fmt: skip
    (status0, first), (status1, second), (status2, third) = replies
    assert status0 == 200 and [item.get("file") for item in first] == ["a.png", "broken.jpg", "c.jpg"]
    assert "embedding" in first[0] and "embedding" in first[2]
    assert first[1]["error"]["code"] in ("corrupt_image", "unsupported_format")
    assert status1 == 200 and isinstance(second, dict) and len(second["embedding"]) == 1280
    assert status2 == 415 and third["error"]["code"] == "unsupported_format"
    # the same image gives the same vector wherever it sits in the batch
    assert torch.allclose(torch.tensor(first[0]["embedding"]), torch.tensor(second["embedding"]), atol=1e-5)


def test_response_carries_identity_labels_and_unmodified_features(lite):
    handler, context = lite
    [(status, result)] = call(handler, context, [{"body": encode(photo("cat.png"), "PNG")}])
    assert status == 200
    assert result["model"]["architecture"] == "efficientnet_lite0"
    assert result["model"]["weights_sha256"].startswith("579344248a93")
    assert result["model"]["embedding_dim"] == 1280 and result["device"] == "cpu"
    probabilities = [p["probability"] for p in result["predictions"]]
    assert len(probabilities) == 5 and probabilities == sorted(probabilities, reverse=True)
    assert 281 <= result["predictions"][0]["index"] <= 285
    assert min(result["embedding"]) >= 0  # pooled after an activation, not normalised or shifted


def test_json_base64_images_are_accepted_and_bad_base64_is_named(lite):
    handler, context = lite
    good = base64.b64encode(encode(photo("coffee.jpg"), "JPEG")).decode()
    document = {"images": [good, {"name": "x.png", "data": "***not base64***"}]}
    [(status, items)] = call(handler, context, [{"body": document}])
    assert status == 200
    assert items[0]["predictions"][0]["label"] in ("espresso", "cup", "coffee mug")
    assert items[1] == {"file": "x.png", "error": items[1]["error"]} and items[1]["error"]["code"] == "invalid_base64"


def test_too_many_images_in_one_request_is_refused_whole(lite):
    handler, context = lite
    limit = handler.pipeline.config.max_images_per_request
    [(status, body)] = call(handler, context, [{f"{i}.png": b"x" for i in range(limit + 1)}])
    assert status == 413 and body["error"]["code"] == "too_many_images"


def test_explain_header_cannot_reroute_the_handler(lite):
    handler, context = lite
    context.request_processor = [RequestProcessor({"explain": "True", "describe": "True"})]
    [body] = handler.handle([{"body": encode(photo("cat.png"), "PNG")}], context)
    assert "embedding" in json.loads(body)


def test_one_forward_gives_the_classifier_logits_and_its_input_features(resnet18_test_weights):
    reference = torchvision.models.resnet18(weights=None)
    reference.load_state_dict(torch.load(resnet18_test_weights, weights_only=True))
    reference.eval()
    ours = load_model(get_spec("resnet18"), resnet18_test_weights)
    x = torch.randn(3, 3, 224, 224)
    with torch.no_grad():
        logits, features = ours(x)
        pooled = torch.flatten(reference.avgpool(reference.layer4(reference.layer3(reference.layer2(
            reference.layer1(reference.maxpool(reference.relu(reference.bn1(reference.conv1(x))))))))), 1)
        assert torch.allclose(logits, reference(x), atol=1e-4)
        assert torch.allclose(features, pooled, atol=1e-5)
        assert torch.allclose(reference.fc(features), logits, atol=1e-5)


def test_resnet18_archive_serves_512_d_vectors_identified_by_its_weights(model_store, tmp_path, resnet18_test_weights):
    from imgsim.models import sha256_file

    handler, context = load_handler(model_store, tmp_path, RESNET)
    [(status, result)] = call(handler, context, [{"body": encode(photo("puppy.jpg"), "JPEG")}])
    assert status == 200 and len(result["embedding"]) == 512
    assert result["model"]["weights_sha256"] == sha256_file(resnet18_test_weights)


def test_a_lower_precision_archive_has_its_own_identity(model_store, tmp_path):
    from imgsim.engines import cpu_runs_bf16
    from imgsim.pipeline import Pipeline, PipelineConfig

    model_dir = unpack(model_store / f"{LITE}.mar", tmp_path / "lite")
    cpu = torch.device("cpu")
    fp32 = Pipeline.from_archive(model_dir, cpu, PipelineConfig(engine="openvino", precision="fp32"))
    bf16 = Pipeline.from_archive(model_dir, cpu, PipelineConfig(engine="openvino", precision="bf16"))
    runs = "+bf16" if cpu_runs_bf16() else ""  # a CPU without bf16 units runs fp32 and its vectors say so
    assert bf16.identity == {**fp32.identity, "handler_version": fp32.identity["handler_version"] + runs}
    image = encode(photo("cat.png"), "JPEG")
    replies = [json.loads(p([{"body": image}])[0].body)["model"] for p in (fp32, bf16)]
    assert replies == [fp32.identity, bf16.identity]


def default_engine(model_dir: Path) -> str:
    from imgsim.archive import read
    from imgsim.pipeline import PipelineConfig, engine_choice

    return engine_choice(PipelineConfig(), read(model_dir).spec, torch.device("cpu"))[0]


@pytest.mark.parametrize("model", [LITE, RESNET])
def test_the_worker_loads_the_files_the_build_exported_and_never_reads_the_weights(model_store, tmp_path, model):
    from imgsim.archive import IDENTITY_FILE
    from imgsim.pipeline import Pipeline, PipelineConfig

    model_dir = unpack(model_store / f"{model}.mar", tmp_path / "model")
    stored = json.loads((model_dir / IDENTITY_FILE).read_text())
    assert list(stored["exported"]) == [default_engine(model_dir)]  # the default engine's files are made at build time
    eager = Pipeline.from_archive(model_dir, torch.device("cpu"), PipelineConfig(engine="eager"))
    (model_dir / stored["weights_file"]).unlink()  # a worker of the exported engine has no use for them
    served = Pipeline.from_archive(model_dir, torch.device("cpu"), PipelineConfig())
    image = encode(photo("cat.png"), "JPEG")
    a, b = (json.loads(p([{"body": image}])[0].body) for p in (eager, served))
    version = a["model"]["handler_version"] + ("+bf16" if served.engine.precision == "bf16" else "")
    assert b["model"] == {**a["model"], "handler_version": version}
    top = [p["index"] for p in a["predictions"]]  # bf16 may swap close calls (test weights are random)
    assert b["predictions"][0]["index"] in (top[:1] if served.engine.precision == "fp32" else top)
    cosine = torch.nn.functional.cosine_similarity(torch.tensor(a["embedding"]), torch.tensor(b["embedding"]), dim=0)
    assert cosine > (0.9999 if served.engine.precision == "fp32" else 0.999)


@pytest.mark.parametrize("model", [LITE, RESNET])
def test_an_exported_file_that_is_not_what_the_build_recorded_is_refused(model_store, tmp_path, model):
    from imgsim.archive import IDENTITY_FILE, ArchiveError
    from imgsim.pipeline import Pipeline, PipelineConfig

    model_dir = unpack(model_store / f"{model}.mar", tmp_path / "model")
    entry = json.loads((model_dir / IDENTITY_FILE).read_text())["exported"][default_engine(model_dir)]
    for name in entry["sha256"]:  # every file of the export: the ONNX file, or the IR's .xml and .bin
        exported = model_dir / name
        original = exported.read_bytes()
        with open(exported, "r+b") as f:  # one flipped byte in the middle
            f.seek(len(original) // 2)
            f.write(bytes([original[len(original) // 2] ^ 0xFF]))
        with pytest.raises(ArchiveError, match=rf"{name} in the archive is .* rebuild the archive with build_mar.sh"):
            Pipeline.from_archive(model_dir, torch.device("cpu"), PipelineConfig())
        exported.unlink()
        with pytest.raises(ArchiveError, match=f"{name} in the archive is missing"):
            Pipeline.from_archive(model_dir, torch.device("cpu"), PipelineConfig())
        exported.write_bytes(original)
    Pipeline.from_archive(model_dir, torch.device("cpu"), PipelineConfig())  # restored: loads again


@pytest.mark.parametrize(
    "parts, expected",
    [
        ({"body": b"abc"}, (True, [None])),
        ({"b.jpg": b"1", "a.jpg": b"2"}, (False, ["b.jpg", "a.jpg"])),
        ({"body": {"images": ["YQ=="]}}, (False, [None])),
        ({"body": b'{"images": [{"name": "n", "data": "YQ=="}]}'}, (False, ["n"])),
    ],
)
def test_request_shapes_keep_names_and_order(parts, expected):
    parsed = parse_request(parts, max_images=10)
    assert (parsed.single, [i.name for i in parsed.images]) == expected


def test_invalid_json_body_is_refused_with_a_reason():
    parsed = parse_request({"body": b'{"images": [oops'}, max_images=10)
    assert parsed.error is not None and parsed.error.code == "invalid_json"
