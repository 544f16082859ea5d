"""Real TorchServe (Java) on free loopback ports, token auth on, over real HTTP."""

from __future__ import annotations

import base64
import os
import re
import shutil
import subprocess
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest
import requests
import torch

from devtools import IMAGES
from devtools.images import encode, photo, tar_of
from imgsim.decode import decode_image
from imgsim.models import get_spec, load_model
from imgsim.preprocess import crop_uint8, normalize
from tests.conftest import LITE, RESNET


def post(server, model, headers: dict | None = None, **kwargs) -> requests.Response:
    return requests.post(server.predict_url(model), headers={**server.headers(), **(headers or {})}, timeout=120, **kwargs)


def multipart(names: list[str]) -> list[tuple[str, tuple[str, bytes]]]:
    return [(name, (name, (IMAGES / name).read_bytes())) for name in names]


def cosine(a, b) -> float:
    a, b = np.asarray(a, dtype=np.float64), np.asarray(b, dtype=np.float64)
    return float(a @ b / np.linalg.norm(a) / np.linalg.norm(b))


def test_curl_style_put_of_a_raw_image_returns_one_result(server):
    response = requests.put(
        server.predict_url(LITE), data=(IMAGES / "cat.png").read_bytes(), headers=server.headers(), timeout=60
    )
    assert response.status_code == 200, response.text
    result = response.json()
    assert isinstance(result, dict) and "file" not in result
    assert 281 <= result["predictions"][0]["index"] <= 285  # a cat class
    assert len(result["embedding"]) == 1280


def test_coffee_photo_is_recognised(server):
    result = post(server, LITE, data=(IMAGES / "coffee.jpg").read_bytes()).json()
    assert result["predictions"][0]["label"] in ("espresso", "cup", "coffee mug")


def test_served_embedding_equals_the_in_process_model(server):
    served = post(server, LITE, data=(IMAGES / "cat.png").read_bytes()).json()["embedding"]
    spec = get_spec("efficientnet_lite0")
    model = load_model(spec, spec.packaged_weights())
    image = decode_image((IMAGES / "cat.png").read_bytes())
    with torch.inference_mode():
        _, features = model(normalize(crop_uint8(image, spec)[None], spec))
    assert cosine(served, features[0].tolist()) >= 0.9999


def test_resnet18_path_end_to_end_with_test_weights(server, resnet18_test_weights):
    from imgsim.models import sha256_file

    response = post(server, RESNET, files=multipart(["puppy.jpg", "cat.png"]))
    assert response.status_code == 200, response.text
    items = response.json()
    assert [item["file"] for item in items] == ["puppy.jpg", "cat.png"]
    assert all(len(item["embedding"]) == 512 for item in items)
    assert items[0]["model"] == {
        "architecture": "resnet18", "weights_sha256": sha256_file(resnet18_test_weights),
        "embedding_dim": 512, "handler_version": items[0]["model"]["handler_version"],
    }  # fmt: skip


def test_multipart_results_come_back_in_request_order(server):
    names = ["temple.jpg", "cat.png", "guitar.jpg", "coffee.jpg", "black_cat.jpg"]
    items = post(server, LITE, files=multipart(names)).json()
    assert [item["file"] for item in items] == names
    for name, item in zip(names, items):
        alone = post(server, LITE, data=(IMAGES / name).read_bytes()).json()
        assert cosine(item["embedding"], alone["embedding"]) > 0.9999


def test_corrupt_image_beside_good_ones(server):
    files = multipart(["cat.png"]) + [("broken.jpg", ("broken.jpg", b"\xff\xd8\xff\xe0 truncated"))]
    files += multipart(["coffee.jpg"])
    response = post(server, LITE, files=files)
    assert response.status_code == 200
    cat, broken, coffee = response.json()
    assert "embedding" in cat and "embedding" in coffee
    assert broken["file"] == "broken.jpg" and broken["error"]["code"] in ("corrupt_image", "unsupported_format")
    assert broken["error"]["message"]


def test_a_tar_of_a_folder_made_by_gnu_tar_answers_each_file_in_order(server, tmp_path):
    folder = tmp_path / "photos"
    folder.mkdir()
    for name in ("temple.jpg", "cat.png", "coffee.jpg"):
        shutil.copy(IMAGES / name, folder / name)
    (folder / "broken.jpg").write_bytes(b"\xff\xd8\xff\xe0 truncated")
    os.symlink("cat.png", folder / "link.png")
    names = ["broken.jpg", "cat.png", "coffee.jpg", "link.png", "temple.jpg"]
    body = subprocess.run(["tar", "cf", "-", "--sort=name", "-C", str(folder), *names], check=True, capture_output=True).stdout
    response = post(server, LITE, data=body, headers={"Content-Type": "application/x-tar"})
    assert response.status_code == 200, response.text[:300]
    items = response.json()
    assert [item["file"] for item in items] == names
    assert items[0]["error"]["code"] in ("corrupt_image", "unsupported_format")
    assert items[3]["error"]["code"] == "not_a_file" and "link" in items[3]["error"]["message"]
    for name, item in zip(names, items):
        if name in ("cat.png", "coffee.jpg", "temple.jpg"):
            alone = post(server, LITE, data=(IMAGES / name).read_bytes()).json()
            assert cosine(item["embedding"], alone["embedding"]) > 0.9999, name


def test_a_damaged_tar_keeps_the_members_before_the_damage(server):
    body = bytearray(tar_of({"cat.png": (IMAGES / "cat.png").read_bytes(), "tent.jpg": (IMAGES / "tent.jpg").read_bytes()}))
    second_header = 512 + -(-(IMAGES / "cat.png").stat().st_size // 512) * 512
    body[second_header + 3] ^= 0xFF
    response = post(server, LITE, data=bytes(body))
    cat, damage = response.json()
    assert response.status_code == 200 and cat["file"] == "cat.png" and len(cat["embedding"]) == 1280
    assert damage["error"]["code"] == "invalid_tar" and f"byte {second_header:,}" in damage["error"]["message"]
    first = bytearray(body)
    first[3] ^= 0xFF
    refused = post(server, LITE, data=bytes(first))
    assert refused.status_code == 400 and refused.json()["error"]["code"] == "invalid_tar"


def test_single_bad_image_gets_a_4xx_with_the_reason(server):
    response = post(server, LITE, data=b"<html>nope</html>")
    assert response.status_code == 415
    assert response.json()["error"]["code"] == "unsupported_format"
    assert post(server, LITE, data=(IMAGES / "cat.png").read_bytes()).status_code == 200  # still serving


def test_json_with_base64_images(server):
    document = {"images": [{"name": "c", "data": base64.b64encode((IMAGES / "coffee.jpg").read_bytes()).decode()}]}
    [item] = post(server, LITE, json=document).json()
    assert item["file"] == "c" and item["predictions"][0]["label"] in ("espresso", "cup", "coffee mug")


def test_concurrent_requests_are_batched_into_one_forward_pass(server):
    before = len(re.findall(r"batch of (\d+) requests", server.log()))
    data = encode(photo("guitar.jpg"), "JPEG")
    with ThreadPoolExecutor(16) as pool:
        statuses = list(pool.map(lambda _: post(server, LITE, data=data).status_code, range(32)))
    assert statuses == [200] * 32
    sizes = [int(n) for n in re.findall(r"batch of (\d+) requests", server.log())[before:]]
    assert sum(sizes) == 32
    assert max(sizes) > 1, sizes


@pytest.mark.parametrize("headers", [{}, {"Authorization": "Bearer wrong-key"}])
def test_requests_without_the_right_key_are_refused(server, headers):
    response = requests.post(server.predict_url(LITE), data=(IMAGES / "cat.png").read_bytes(), headers=headers)
    assert response.status_code == 400
    assert "InvalidKeyException" in response.text


def test_models_cannot_be_registered_even_with_the_management_key(server):
    response = requests.post(
        f"{server.management_url}/models", params={"url": "/etc/passwd"},
        headers={"Authorization": f"Bearer {server.management_key}"}, timeout=30,
    )  # fmt: skip
    assert response.status_code in (400, 403, 405), response.text
    assert "passwd" not in requests.get(
        f"{server.management_url}/models", headers={"Authorization": f"Bearer {server.management_key}"}, timeout=30
    ).text
