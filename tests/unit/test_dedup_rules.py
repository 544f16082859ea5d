"""Duplicate groups without a server: blockwise pairs, pHash, the pair rule, tiers, thresholds, and the edits."""

from __future__ import annotations

import random

import numpy as np
from PIL import Image

from client.duplicates import (
    CALIBRATED,
    Content,
    Link,
    build_groups,
    classify,
    cosine_pairs,
    find_groups,
    thresholds_for,
    unit_rows,
)
from client.duplicates.phash import PHash, distance, phash_file, phash_image
from devtools import IMAGES
from devtools.photos import EDITS, inscribed, rotate

LITE_T = CALIBRATED["efficientnet_lite0"]


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
    w, h = inscribed(300, 200, 0.0)
    assert (round(w), round(h)) == (300, 200)
