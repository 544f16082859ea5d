"""Every bad-input case against real TorchServe: the outcome docs/BAD_INPUT.md documents, a
server that keeps answering, and good images in the same request still served."""

from __future__ import annotations

import base64
import re
import shutil
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
import requests

from client.torchserve_client import EmbeddingClient, Upload
from devtools import IMAGES, REPO
from devtools.images import cat_exif_rotated_jpeg, cat_upright_jpeg, encode, photo
from tests.conftest import LITE
from tests.support import bad_inputs
from tests.support.bad_inputs import BY_NAME, CASES, GOOD, Case, Request
from tests.support.cli import json_frame, run_client

TABLE = REPO / "docs" / "BAD_INPUT.md"
ROW = re.compile(r"^\|\s*`(?P<case>[a-z0-9_]+)`\s*\|(?P<what>[^|]*)\|\s*(?P<status>\d{3})\s*\|(?P<code>[^|]*)\|(?P<beside>[^|]*)\|\s*$")


@dataclass(frozen=True)
class Documented:
    status: int
    code: str  # an error code, "result", or "empty body"
    beside: str


def documented() -> dict[str, Documented]:
    rows = {}
    for line in TABLE.read_text().splitlines():
        if match := ROW.match(line):
            cell = match["code"].strip()
            code = cell.strip("`") if cell.startswith("`") else ("empty body" if "empty body" in cell else cell)
            rows[match["case"]] = Documented(int(match["status"]), code, match["beside"].strip())
    return rows


def send(server, request: Request) -> requests.Response:
    return requests.post(
        server.predict_url(LITE), headers=server.headers(), data=request.data, files=request.files,
        json=request.json, timeout=300,
    )  # fmt: skip


def outcome(item: dict) -> str:
    """One reply item as the table names it: its error code, or "result"."""
    if "error" in item:
        assert item["error"]["message"] and "Traceback" not in item["error"]["message"]
        return item["error"]["code"]
    assert len(item["embedding"]) == 1280 and item["predictions"], item
    return "result"


def alone_outcome(response: requests.Response) -> str:
    if not response.content:
        return "empty body"
    body = response.json()
    items = body if isinstance(body, list) else [body]
    assert len(items) == 1 or response.status_code == 200, body
    return outcome(items[0])


def still_serving(server) -> None:
    response = requests.post(
        server.predict_url(LITE), data=(IMAGES / "cat.png").read_bytes(), headers=server.headers(), timeout=120
    )
    assert response.status_code == 200, response.text


def test_the_table_documents_every_case_once():
    rows = [m["case"] for line in TABLE.read_text().splitlines() if (m := ROW.match(line))]
    assert sorted(rows) == sorted(case.name for case in CASES)
    assert len(rows) == len(set(rows))


def test_the_corpus_covers_every_kind_the_issue_names():
    kinds = {
        "empty", "random_bytes", "text_as_jpeg", "html_as_png", "svg", "truncated_jpeg", "truncated_png",
        "png_bad_header_crc", "one_pixel", "png_bomb", "photo_over_40mp", "sixteen_bit_png", "cmyk_jpeg",
        "palette_transparency", "animated_gif", "exif_rotated_jpeg", "body_over_limit", "too_many_images",
        "json_invalid_base64",
    }  # fmt: skip
    assert kinds <= set(BY_NAME)


@pytest.mark.parametrize("case", CASES, ids=lambda case: case.name)
def test_each_case_gets_its_documented_outcome_and_the_server_keeps_serving(server, case: Case):
    doc = documented()[case.name]
    response = send(server, case.alone())
    assert (response.status_code, alone_outcome(response)) == (doc.status, doc.code), response.text[:500]
    if case.name == "max_images":
        assert [outcome(item) for item in response.json()] == ["result"] * bad_inputs.MAX_IMAGES
    if case.beside is None:
        assert doc.beside in ("the whole request refused", "every image served")
        assert (doc.beside == "the whole request refused") == (response.status_code >= 400)
    else:
        assert doc.beside.endswith("the others served")
        response = send(server, case.beside())
        assert response.status_code == 200, response.text[:500]
        first, bad, second = response.json()
        assert (outcome(first), outcome(second)) == ("result", "result")
        assert first.get("file") == GOOD[0] and second.get("file") == GOOD[1]
        assert outcome(bad) == doc.code
        assert doc.beside.startswith("its error entry" if doc.code != "result" else "its result")
    still_serving(server)


def embedding(server, data: bytes) -> np.ndarray:
    response = send(server, Request(data=data))
    assert response.status_code == 200, response.text[:300]
    return np.asarray(response.json()["embedding"], dtype=np.float64)


def cosine(a: np.ndarray, b: np.ndarray) -> float:
    return float(a @ b / np.linalg.norm(a) / np.linalg.norm(b))


# Each valid-but-unusual image embeds like the photo it was made from, and unlike the other one.
SOURCES = {
    "png_bad_data_crc": ("cat.png", 0.999),
    "photo_over_40mp": ("coffee.jpg", 0.98),
    "sixteen_bit_png": ("cat.png", 0.85),  # grayscale against the colour photo
    "cmyk_jpeg": ("coffee.jpg", 0.99),
    "palette_transparency": ("cat.png", 0.95),
    "animated_gif": ("cat.png", 0.95),  # its first frame
    "exif_rotated_jpeg": ("cat.png", 0.99),
}


def test_valid_unusual_images_embed_like_their_source_photo(server):
    photos = {name: embedding(server, (IMAGES / name).read_bytes()) for name in GOOD}
    for case, (source, at_least) in SOURCES.items():
        vector = embedding(server, BY_NAME[case].file[1]())
        other = next(name for name in GOOD if name != source)
        assert cosine(vector, photos[source]) >= at_least, case
        assert cosine(vector, photos[other]) < 0.5, case


def test_exif_orientation_is_what_makes_the_sideways_jpeg_upright(server):
    upright = embedding(server, cat_upright_jpeg())
    with_exif = embedding(server, cat_exif_rotated_jpeg())
    sideways = embedding(server, encode(photo("cat.png").transpose(2), "JPEG", quality=90))  # same pixels, no EXIF
    assert cosine(with_exif, upright) > 0.99
    assert cosine(sideways, upright) < cosine(with_exif, upright) - 0.05


def test_the_format_comes_from_the_bytes_not_the_name(server):
    jpeg = (IMAGES / "coffee.jpg").read_bytes()
    response = send(server, Request(files=[("photo.png", ("photo.png", jpeg)), ("notes.txt", ("notes.txt", jpeg))]))
    assert [outcome(item) for item in response.json()] == ["result", "result"]


def test_json_items_are_named_and_answered_in_order(server):
    good = base64.b64encode((IMAGES / "cat.png").read_bytes()).decode()
    response = send(server, Request(json={"images": [good, "%%%", {"name": "n", "data": good}, {"name": "x"}]}))
    items = response.json()
    assert response.status_code == 200
    assert [outcome(item) for item in items] == ["result", "invalid_base64", "result", "invalid_base64"]
    assert [item.get("file") for item in items] == [None, None, "n", "x"]


def test_the_client_splits_a_batch_over_the_request_size_limit(server, tmp_path: Path):
    """TorchServe answers an oversize body with an empty 413; the client halves the batch until each
    request fits, and a single file over the limit is that file's error, not the run's end."""
    limit = bad_inputs.REQUEST_SIZE_LIMIT
    uploads = []
    for i in range(5):  # 5 x 15 MB = 75 MB in one request: over the 64 MiB limit
        path = tmp_path / f"big{i}.jpg"
        path.write_bytes((IMAGES / "coffee.jpg").read_bytes() + bytes(15_000_000))  # a JPEG with trailing bytes
        uploads.append(Upload(path.name, path))
    huge = tmp_path / "huge.jpg"
    huge.write_bytes(bytes(limit + 1))
    uploads.insert(2, Upload(huge.name, huge))
    client = EmbeddingClient(server.url, LITE, server.key, "test", retries=1)
    [results] = list(client.embed_batches([uploads]))
    assert [r.name for r in results] == [u.name for u in uploads]
    assert [r.error["code"] if r.error else "result" for r in results] == ["result"] * 2 + ["too_large"] + ["result"] * 3
    assert "max_request_size" in results[2].error["message"]


# --- names the client sends ----------------------------------------------------------------------


def rank_json(server, folder: Path, reference: Path) -> tuple[dict, str]:
    result = run_client("rank", "--no-store", "--format", "json", "--images_folder", str(folder), "--ref_image",
                        str(reference), server=server, timeout=300)  # fmt: skip
    return {row["file"]: row for row in json_frame(result).to_dict("records")}, result.stderr


def test_file_names_a_multipart_body_would_merge_keep_their_own_results(server, tmp_path):
    """TorchServe turns ':;=,' and tabs in multipart part names into spaces and trims spaces, so
    "a:b.jpg" and "a b.jpg" would arrive as one part; the client's tar bodies keep every name."""
    folder = tmp_path / "names"
    folder.mkdir()
    photos = ["coffee.jpg", "guitar.jpg", "puppy.jpg", "temple.jpg", "black_cat.jpg", "tent.jpg", "rocket.jpg"]
    names = ["a b.jpg", "a:b.jpg", "a;b.jpg", "a=b.jpg", "a,b.jpg", " a b.jpg", 'a"b.jpg']
    for name, source in zip(names, photos):
        shutil.copy(IMAGES / source, folder / name)
    rows, _ = rank_json(server, folder, IMAGES / "cat.png")
    assert set(rows) == set(names)
    for name, source in zip(names, photos):
        alone = requests.post(server.predict_url(LITE), data=(IMAGES / source).read_bytes(), headers=server.headers(),
                              timeout=60).json()  # fmt: skip
        assert rows[name]["label"] == alone["predictions"][0]["label"], name


def test_a_reference_outside_the_folder_may_share_a_name_with_a_folder_file(server, tmp_path):
    (tmp_path / "photos").mkdir()
    (tmp_path / "ref").mkdir()
    for name in ("cat.png", "coffee.jpg", "guitar.jpg"):
        shutil.copy(IMAGES / name, tmp_path / "photos" / name)
    shutil.copy(IMAGES / "temple.jpg", tmp_path / "ref" / "cat.png")  # other bytes, same name
    rows, stderr = rank_json(server, tmp_path / "photos", tmp_path / "ref" / "cat.png")
    assert set(rows) == {"cat.png", "coffee.jpg", "guitar.jpg"}
    assert rows["cat.png"]["label"] in ("Egyptian cat", "tabby", "tiger cat")
    assert "ref/cat.png  ->  " in stderr and "cat" not in stderr.split("->")[1].split("\n")[0]
