"""Duplicate groups: the rules without a server, then client/dedup.py against real TorchServe and the store."""

from __future__ import annotations

import io
import random
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from bench.photo_corpus import EDITS, _inscribed, rotate
from client.api import EmbeddingClient
from client.duplicates import (
    CALIBRATED, Content, Link, build_groups, classify, cosine_pairs, find_groups, seen_matches,
    thresholds_for, unit_rows,
)  # fmt: skip
from client.embedding import embed_files
from client.phash import PHash, distance, phash_file, phash_image
from client.scan import describe
from client.store import model_key, open_store
from tests.browser import rendered_images
from tests.conftest import IMAGES, LITE, REPO

LITE_T = CALIBRATED["efficientnet_lite0"]

# --- the rules, no server ------------------------------------------------------------------------


def test_blockwise_pairs_equal_the_full_matrix_and_cap_each_row():
    rng = np.random.default_rng(0)
    vectors = rng.random((300, 24)).astype(np.float32)
    vectors[200:230] = vectors[7] + 0.02 * rng.random((30, 24)).astype(np.float32)  # 31 copies of one picture
    unit = unit_rows(vectors)
    full = unit @ unit.T
    want = set(zip(*np.nonzero(np.triu(full >= 0.95, 1))))
    i, j, s = cosine_pairs(unit, 0.95, block_cells=300 * 17)  # blocks of 17 rows
    assert set(zip(i.tolist(), j.tolist())) == {(int(a), int(b)) for a, b in want}
    assert np.allclose(s, full[i, j], atol=1e-6) and (i < j).all()
    i, j, _ = cosine_pairs(unit, 0.95, max_per_row=4, block_cells=300 * 17)
    assert np.bincount(i).max() == 4
    assert len({*i.tolist(), *j.tolist()} & set(range(200, 230))) == 30  # the capped rows still reach every copy


def test_phash_matches_the_reference_dct_and_mirrors_for_free():
    from scipy.fftpack import dct  # the definition imagehash.phash uses

    image = Image.open(IMAGES / "coffee.jpg").convert("RGB")
    grey = np.asarray(image.convert("L").resize((32, 32), Image.LANCZOS))
    low = dct(dct(grey, axis=0), axis=1)[:8, :8]
    reference = int("".join("1" if v else "0" for v in (low > np.median(low)).ravel()), 2)
    mine = phash_image(image)
    assert mine.bits == reference
    assert phash_image(image.transpose(Image.FLIP_LEFT_RIGHT)).bits == mine.mirrored
    assert distance(mine, phash_image(image.transpose(Image.FLIP_LEFT_RIGHT))) == 0


def test_unreadable_file_has_no_phash_and_falls_back_to_cosine(tmp_path):
    broken = tmp_path / "broken.jpg"
    broken.write_bytes(b"\xff\xd8\xff\xe0 not a jpeg")
    assert phash_file(broken) is None
    assert phash_file(tmp_path / "missing.jpg") is None
    t = LITE_T
    middle = (t.near + t.near_low) / 2
    assert classify(middle, (None, None), t, similar=False) is None
    same = PHash(0b1011, 0b1101)
    assert classify(middle, (same, same), t, similar=False) == ("near", 0)
    assert classify(t.near, (None, None), t, similar=False) == ("near", None)
    assert classify(t.similar, (None, None), t, similar=True) == ("similar", None)


def test_group_tier_is_the_weakest_link_it_needs():
    contents = [Content("a" * 64, [("a1.jpg", "/a1.jpg"), ("a2.jpg", "/a2.jpg")]),
                Content("b" * 64, [("b.jpg", "/b.jpg")]), Content("c" * 64, [("c.jpg", "/c.jpg")]),
                Content("d" * 64, [("d.jpg", "/d.jpg"), ("d2.jpg", "/d2.jpg")]),
                Content("e" * 64, [("e.jpg", "/e.jpg")])]  # fmt: skip
    links = [Link(0, 1, "near", 0.9), Link(1, 2, "similar", 0.7, None)]
    groups = build_groups(contents, links)
    assert [(g.tier, [m.file for m in g.members]) for g in groups] == [
        ("similar", ["a1.jpg", "a2.jpg", "b.jpg", "c.jpg"]), ("exact", ["d.jpg", "d2.jpg"])]  # fmt: skip
    ties = {m.file: (m.tier, m.match) for m in groups[0].members}
    assert ties == {"a1.jpg": ("exact", "a2.jpg"), "a2.jpg": ("exact", "a1.jpg"), "b.jpg": ("near", "a1.jpg"),
                    "c.jpg": ("similar", "b.jpg")}  # fmt: skip
    assert build_groups(contents, links[:1])[0].tier == "near"


def test_find_groups_of_vectors_reads_hashes_only_in_the_middle_band():
    axes = np.eye(6, dtype=np.float32)
    middle = (LITE_T.near + LITE_T.near_low) / 2
    vectors = np.stack([axes[0], axes[0] + 0.01 * axes[1], axes[2], axes[3],
                        middle * axes[3] + np.sqrt(1 - middle**2) * axes[4], axes[5]])  # fmt: skip
    contents = [Content(str(k) * 64, [(f"{k}.jpg", f"/{k}.jpg")]) for k in range(6)]
    asked = []

    def hashes(sha: str) -> PHash:
        asked.append(sha[0])
        return PHash(0b1, 0b1)  # identical pictures, as far as the hash can tell

    groups = find_groups(contents, vectors, LITE_T, hashes=hashes)
    assert [(g.tier, [m.file for m in g.members]) for g in groups] == [
        ("near", ["0.jpg", "1.jpg"]), ("near", ["3.jpg", "4.jpg"])]  # fmt: skip
    assert sorted(asked) == ["3", "4"]
    assert "pHash differs in 0/64 bits" in groups[1].members[1].why


def test_thresholds_are_per_architecture_and_overridable():
    assert thresholds_for("efficientnet_lite0") == LITE_T and LITE_T.calibrated
    assert not thresholds_for("resnet18").calibrated
    assert thresholds_for("efficientnet_lite0", near=0.9, similar=None).near == 0.9


def test_every_edit_is_seeded_and_rotation_leaves_no_corners():
    image = Image.new("RGB", (300, 200), (255, 255, 255))
    for name, edit in EDITS.items():
        a, params = edit(image, random.Random(3))
        b, again = edit(image, random.Random(3))
        assert params == again and a.tobytes() == b.tobytes(), name
    turned, _ = rotate(image, random.Random(5))
    assert np.asarray(turned).min() >= 200  # no black wedge from outside the photo
    w, h = _inscribed(300, 200, 0.0)
    assert (round(w), round(h)) == (300, 200)


# --- the command, against TorchServe -------------------------------------------------------------


def dedup(server, *args: str, timeout: float = 300) -> subprocess.CompletedProcess:
    command = [sys.executable, str(REPO / "client" / "dedup.py"), "--url", server.url, "--model", LITE,
               "--token-file", str(server.key_file), "--quiet", *args]  # fmt: skip
    return subprocess.run(command, cwd=REPO, capture_output=True, text=True, timeout=timeout)


def frame_of(result: subprocess.CompletedProcess) -> pd.DataFrame:
    assert result.returncode == 0, result.stderr
    return pd.read_json(io.StringIO(result.stdout), orient="records")


def _edited(source: str, edit: str, seed: int) -> Image.Image:
    image, _ = EDITS[edit](Image.open(IMAGES / source).convert("RGB"), random.Random(seed))
    return image


@pytest.fixture(scope="module")
def photos(tmp_path_factory) -> Path:
    """Real photos, edited copies of some, byte copies of others, and photos that match nothing."""
    folder = tmp_path_factory.mktemp("photos")
    (folder / "sub").mkdir()
    for name in ("coffee.jpg", "rocket.jpg", "cat.png", "puppy.jpg", "guitar.jpg", "tent.jpg", "temple.jpg",
                 "black_cat.jpg"):  # fmt: skip
        shutil.copy(IMAGES / name, folder / name)
    _edited("coffee.jpg", "crop", 1).save(folder / "coffee_crop.jpg", quality=90)
    _edited("coffee.jpg", "flip", 1).save(folder / "coffee_mirror.jpg", quality=90)
    _edited("coffee.jpg", "caption", 2).save(folder / "sub" / "coffee_caption.jpg", quality=90)
    _edited("rocket.jpg", "jpeg", 1).save(folder / "rocket_small.jpg", quality=90)
    _edited("rocket.jpg", "rotate", 1).save(folder / "rocket_straightened.jpg", quality=90)
    _edited("cat.png", "brightness", 1).save(folder / "cat_bright.jpg", quality=90)
    shutil.copy(IMAGES / "cat.png", folder / "cat_copy.png")
    shutil.copy(IMAGES / "puppy.jpg", folder / "sub" / "puppy.jpg")
    return folder


@pytest.fixture(scope="module")
def stored(server, photos, tmp_path_factory) -> tuple[Path, subprocess.CompletedProcess]:
    """The first run: embeds every distinct content once and keeps the vectors in a store."""
    store = tmp_path_factory.mktemp("dedup-store") / "store.sqlite"
    return store, dedup(server, str(photos), "--store", str(store), "--format", "json")


def groups_of(frame: pd.DataFrame) -> dict[str, tuple[str, set[str]]]:
    """Group tier and files, keyed by the group's first file."""
    out = {}
    for _, members in frame.groupby("group"):
        files = set(members["file"])
        out[sorted(files)[0]] = (members["group_tier"].iloc[0], files)
    return out


def test_tiers_on_a_small_generated_set(stored):
    _, result = stored
    frame = frame_of(result)
    assert groups_of(frame) == {
        "coffee.jpg": ("near", {"coffee.jpg", "coffee_crop.jpg", "coffee_mirror.jpg", "sub/coffee_caption.jpg"}),
        "cat.png": ("near", {"cat.png", "cat_copy.png", "cat_bright.jpg"}),
        "rocket.jpg": ("near", {"rocket.jpg", "rocket_small.jpg", "rocket_straightened.jpg"}),
        "puppy.jpg": ("exact", {"puppy.jpg", "sub/puppy.jpg"}),
    }
    assert list(frame.groupby("group").size()) == [4, 3, 3, 2]  # largest first
    ties = frame.set_index("file")
    assert ties.loc["cat_copy.png", "tier"] == "exact" and ties.loc["cat_copy.png", "score"] == 1.0
    assert ties.loc["cat_bright.jpg", "tier"] == "near" and "cosine" in ties.loc["cat_bright.jpg", "why"]
    assert "16 files, 14 distinct; 4 groups (1 exact, 3 near) holding 12 files" in result.stderr
    assert "sent 14 to the server" in result.stderr and "peak memory" in result.stderr


def test_second_run_sends_nothing_and_writes_csv(server, photos, stored, tmp_path):
    store, first = stored
    before = server.prediction_requests(LITE)
    out = tmp_path / "dupes.csv"
    result = dedup(server, str(photos), "--store", str(store), "--format", "csv", "--output", str(out))
    assert result.returncode == 0, result.stderr
    assert server.prediction_requests(LITE) == before
    assert "sent 0 to the server, reused 14 from the store" in result.stderr
    csv = pd.read_csv(out)
    assert list(csv.columns) == ["group", "group_tier", "file", "tier", "score", "match", "why", "sha256", "path"]
    assert len(csv) == len(frame_of(first)) == 12


def test_similar_tier_is_opt_in_and_labelled(server, photos, stored):
    store, _ = stored
    plain = frame_of(dedup(server, str(photos), "--store", str(store), "--format", "json"))
    assert "similar" not in set(plain["tier"])
    # cat.png and black_cat.jpg: same subject, another photo (cosine about 0.5 with this model)
    wide = frame_of(dedup(server, str(photos), "--store", str(store), "--format", "json", "--similar",
                          "--similar-threshold", "0.45"))  # fmt: skip
    cats = groups_of(wide)["black_cat.jpg"]
    assert cats[0] == "similar" and {"cat.png", "cat_bright.jpg"} <= cats[1]
    assert wide.set_index("file").loc["black_cat.jpg", "tier"] == "similar"


def test_store_alone_groups_everything_without_the_server(server, photos, stored):
    store, first = stored
    before = server.prediction_requests(LITE)
    result = dedup(server, "--store", str(store), "--format", "json")
    assert server.prediction_requests(LITE) == before
    frame = frame_of(result)
    assert sorted(map(len, (files for _, files in groups_of(frame).values()))) == [2, 3, 3, 4]
    assert set(frame["path"]) == set(frame_of(first)["path"])


def test_html_page_renders_a_thumbnail_per_file_in_chromium(server, photos, stored, tmp_path):
    store, _ = stored
    page = tmp_path / "dupes.html"
    result = dedup(server, str(photos), "--store", str(store), "--html", str(page))
    assert result.returncode == 0, result.stderr
    assert "exact" in result.stdout and "coffee_crop.jpg" in result.stdout  # the table on stdout
    ok, total = rendered_images(page, tmp_path / "chromium")
    assert total == 12 and ok == total
    assert page.read_text().count("<h2>Group ") == 4


def test_seen_finds_exact_and_near_copies_without_embedding_the_store_again(server, photos, stored, tmp_path):
    store_path, _ = stored
    new = tmp_path / "new"
    new.mkdir()
    _edited("rocket.jpg", "crop", 7).save(new / "rocket_cropped.jpg", quality=85)
    shutil.copy(IMAGES / "coffee.jpg", new / "coffee_again.jpg")
    Image.open(IMAGES / "flower.jpg").save(new / "flower.png")  # never seen
    client = EmbeddingClient(server.url, LITE, server.key, "test")
    with open_store(store_path) as store:
        files = [describe(p, new) for p in sorted(new.iterdir())]
        before = server.prediction_requests(LITE)
        embedded = embed_files(files, client, store, 8, progress=False)
        assert server.prediction_requests(LITE) - before == 1  # one request: only the three queries
        key = model_key(embedded.identity)
        found = {f.name: seen_matches(store, key, embedded.items[f.sha256], f.path, LITE_T) for f in files}
    assert [(m.tier, Path(m.paths[0]).name) for m in found["coffee_again.jpg"]][:1] == [("exact", "coffee.jpg")]
    near = {Path(p).name for m in found["rocket_cropped.jpg"] if m.tier == "near" for p in m.paths}
    assert "rocket.jpg" in near and near <= {"rocket.jpg", "rocket_small.jpg", "rocket_straightened.jpg"}
    assert found["flower.png"] == []


def test_bad_arguments_and_unknown_models_say_what_to_do(server, photos, stored, tmp_path):
    store, _ = stored
    missing = dedup(server, str(tmp_path / "nowhere"))
    assert missing.returncode == 2 and "is not a folder" in missing.stderr
    other = dedup(server, "--store", str(store), "--model", "resnet18-embed")
    assert other.returncode == 2 and "run dedup.py or rank.py on a folder first" in other.stderr
    assert "Traceback" not in missing.stderr + other.stderr
