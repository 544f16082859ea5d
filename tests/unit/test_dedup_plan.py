"""Acting on groups without a server: pairs marked apart never share a group, and which copy a plan keeps."""

from __future__ import annotations

import os
import random
import shutil

import pytest
from PIL import Image

from client.duplicates import Content, Group, Link, Member, build_groups
from client.duplicates.plan import KEEP_RULES, FileFacts, header_pixels, make_plan
from devtools import IMAGES
from devtools.dng import dng


def sha(n: int) -> str:
    return f"{n:064x}"


def lone(n: int) -> Content:
    return Content(sha(n), [(f"{n}.jpg", f"/p/{n}.jpg")])


def test_a_pair_marked_apart_never_shares_a_group_even_through_a_third_image():
    contents = [lone(0), lone(1), lone(2)]
    # 0-1 and 1-2 are strong, 0-2 weaker: without the mark, one group of three
    links = [Link(0, 1, "near", 0.95), Link(1, 2, "near", 0.90), Link(0, 2, "near", 0.85)]
    assert [len(g.members) for g in build_groups(contents, links)] == [3]
    groups = build_groups(contents, links, apart={(sha(0), sha(2))})
    # strongest first: 0-1 joins; 1-2 would put 2 with 0, so it is left out, and so is 0-2
    assert [sorted(m.file for m in g.members) for g in groups] == [["0.jpg", "1.jpg"]]
    assert {m.match for m in groups[0].members} == {"0.jpg", "1.jpg"}  # ties name members of the group only


def test_marks_whichever_way_round_and_unknown_shas_change_nothing():
    contents = [lone(0), lone(1), lone(2)]
    links = [Link(0, 1, "near", 0.95), Link(1, 2, "near", 0.90)]
    assert build_groups(contents, links, apart={(sha(1), sha(0))}) == build_groups(contents, [links[1]])
    assert build_groups(contents, links, apart={(sha(7), sha(8))}) == build_groups(contents, links)


def test_no_group_ever_holds_a_marked_pair_on_random_graphs():
    rng = random.Random(5)
    for _ in range(200):
        n = rng.randint(2, 14)
        contents = [lone(i) for i in range(n)]
        links = [Link(a, b, rng.choice(["near", "similar"]), rng.random())
                 for a in range(n) for b in range(a + 1, n) if rng.random() < 0.4]  # fmt: skip
        apart = {(sha(a), sha(b)) for a in range(n) for b in range(a + 1, n) if rng.random() < 0.1}
        for group in build_groups(contents, links, apart):
            shas = {m.sha256 for m in group.members}
            assert not any(a in shas and b in shas for a, b in apart)
        if not apart:
            assert build_groups(contents, links, apart) == build_groups(contents, links)


def member(path: str, n: int, tier: str = "near") -> Member:
    return Member(path.rsplit("/", 1)[-1], path, sha(n), tier, 0.9, "x", "cosine 0.900")


def facts_of(table: dict[str, FileFacts]):
    return lambda path: table.get(path)


def test_default_keeps_most_pixels_then_largest_then_oldest_and_moves_exact_copies_too():
    group = Group("near", [member("/f/a.jpg", 1, "exact"), member("/f/sub/a.jpg", 1, "exact"), member("/f/big.jpg", 2),
                           member("/f/small.jpg", 3)])  # fmt: skip
    table = {
        "/f/a.jpg": FileFacts(500, 10, 100), "/f/sub/a.jpg": FileFacts(500, 20, 100),
        "/f/big.jpg": FileFacts(400, 30, 200), "/f/small.jpg": FileFacts(900, 5, 50),
    }  # fmt: skip
    steps = {s.relative: s for s in make_plan([group], "/f", facts=facts_of(table))}
    assert [r for r, s in steps.items() if s.action == "keep"] == ["big.jpg"]
    assert {r for r, s in steps.items() if s.action == "go"} == {"a.jpg", "sub/a.jpg", "small.jpg"}
    assert steps["a.jpg"].why.startswith("kept big.jpg: more pixels")
    assert all(s.kept == "big.jpg" and s.group == 1 and s.tier == "near" for s in steps.values())
    # equal pixels: the larger file; equal size too: the older; all equal: the first path
    table["/f/big.jpg"] = FileFacts(400, 30, 100)
    steps = {s.relative: s for s in make_plan([group], "/f", facts=facts_of(table))}
    assert [r for r, s in steps.items() if s.action == "keep"] == ["a.jpg"]
    assert steps["sub/a.jpg"].why.startswith("kept a.jpg: older")
    assert steps["small.jpg"].why.startswith("kept a.jpg: more pixels")


@pytest.mark.parametrize(
    ("rule", "kept"),
    [("pixels", "b.jpg"), ("largest", "c.jpg"), ("oldest", "deep/er/a.jpg"), ("newest", "c.jpg"),
     ("shortest-path", "b.jpg")],
)  # fmt: skip
def test_each_keep_rule_keeps_exactly_one_file(rule, kept):
    paths = ["/f/deep/er/a.jpg", "/f/b.jpg", "/f/c.jpg"]
    table = {paths[0]: FileFacts(100, 1, 10), paths[1]: FileFacts(200, 2, 30), paths[2]: FileFacts(300, 3, 20)}
    steps = make_plan([Group("near", [member(p, i) for i, p in enumerate(paths)])], "/f", rule, facts_of(table))
    assert [s.relative for s in steps if s.action == "keep"] == [kept]
    assert sum(s.action == "go" for s in steps) == 2
    assert rule in KEEP_RULES


def test_links_never_go_and_the_file_a_link_points_to_stays(tmp_path):
    (tmp_path / "big.jpg").write_bytes(b"x" * 300)
    (tmp_path / "a.jpg").write_bytes(b"y" * 100)
    (tmp_path / "link.jpg").symlink_to(tmp_path / "a.jpg")
    group = Group("near", [member(str(tmp_path / n), i) for i, n in enumerate(["a.jpg", "big.jpg", "link.jpg"])])
    steps = {s.relative: s for s in make_plan([group], tmp_path, "largest", facts=_no_pixels)}
    assert steps["link.jpg"].action == "leave" and "symbolic link" in steps["link.jpg"].why
    assert steps["a.jpg"].action == "keep"  # not the largest, but a link in the group points to it
    assert steps["big.jpg"].action == "go"


def _no_pixels(path: str) -> FileFacts | None:
    from client.duplicates.plan import file_facts

    return file_facts(path, pixels=lambda _: 0)


def test_a_file_gone_before_planning_is_left_and_never_kept(tmp_path):
    (tmp_path / "b.jpg").write_bytes(b"b")
    group = Group("exact", [member(str(tmp_path / "a.jpg"), 1), member(str(tmp_path / "b.jpg"), 1)])
    steps = {s.relative: s for s in make_plan([group], tmp_path, facts=_no_pixels)}
    assert (steps["a.jpg"].action, steps["a.jpg"].why) == ("leave", "gone since it was scanned")
    assert steps["b.jpg"].action == "keep"


def test_pixels_come_from_the_header_alone(tmp_path):
    whole = tmp_path / "coffee.jpg"
    shutil.copy(IMAGES / "coffee.jpg", whole)
    header_only = tmp_path / "cut.jpg"
    header_only.write_bytes(whole.read_bytes()[:2048])  # no pixel data left to decode
    from PIL import Image

    with Image.open(whole) as image:
        w, h = image.size
    assert header_pixels(whole) == header_pixels(header_only) == w * h
    (tmp_path / "junk.jpg").write_bytes(b"not an image")
    assert header_pixels(tmp_path / "junk.jpg") == 0
    assert os.path.exists(whole)


def test_a_raw_counts_its_sensor_pixels_not_its_small_embedded_thumbnail(tmp_path):
    photo = Image.open(IMAGES / "coffee.jpg").convert("RGB")
    (tmp_path / "coffee.dng").write_bytes(dng(photo, preview=False, thumbnail_side=128))
    assert header_pixels(tmp_path / "coffee.dng") == photo.width * photo.height
