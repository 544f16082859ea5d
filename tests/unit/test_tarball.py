"""Tar request bodies: what Python's tarfile and GNU tar write is read back member for member."""

from __future__ import annotations

import io
import os
import subprocess
import tarfile

import pytest

from devtools.images import tar_of
from imgsim.payload import parse_request
from imgsim.tarball import BLOCK, TarError, looks_like_tar, read_members

LONG = "deep/" * 30 + "photo.jpg"  # 159 characters: past ustar's 100-character name field


@pytest.mark.parametrize("fmt", [tarfile.USTAR_FORMAT, tarfile.GNU_FORMAT, tarfile.PAX_FORMAT])
def test_every_tar_format_python_writes_reads_back_in_order(fmt):
    files = {"b.jpg": b"\xff\xd8" * 700, "a/c.png": b"png", "empty.gif": b""}
    if fmt != tarfile.USTAR_FORMAT:
        files[LONG] = b"long"
    if fmt == tarfile.PAX_FORMAT:
        files["caf\u00e9 \u732b:;=,.jpg"] = b"unicode"
    body = tar_of(files, fmt)
    assert looks_like_tar(body)
    members = read_members(body, limit=64)
    assert [(m.name, m.data, m.error) for m in members] == [(n, d, None) for n, d in files.items()]


@pytest.mark.parametrize("fmt", ["gnu", "posix"])
def test_gnu_tar_archives_of_a_folder_skip_folders_and_refuse_links_and_sparse_files(tmp_path, fmt):
    folder = tmp_path / "photos"
    (folder / LONG).parent.mkdir(parents=True)
    (folder / LONG).write_bytes(b"x" * 1000)
    (folder / "a.jpg").write_bytes(b"a" * 10)
    os.symlink("a.jpg", folder / "link.jpg")
    with open(folder / "sparse.jpg", "wb") as f:
        f.seek(1 << 20)
        f.write(b"end")
    body = subprocess.run(
        ["tar", "cf", "-", f"--format={fmt}", "--sparse", "--sort=name", "-C", str(tmp_path), "photos"],
        check=True, capture_output=True,
    ).stdout  # fmt: skip
    members = {m.name: m for m in read_members(body, limit=64)}
    assert set(members) == {f"photos/{LONG}", "photos/a.jpg", "photos/link.jpg", "photos/sparse.jpg"}
    assert members[f"photos/{LONG}"].data == b"x" * 1000 and members["photos/a.jpg"].data == b"a" * 10
    assert members["photos/link.jpg"].code == "not_a_file" and "link" in members["photos/link.jpg"].error
    assert members["photos/sparse.jpg"].code == "not_a_file" and "sparse" in members["photos/sparse.jpg"].error


def test_a_truncated_archive_keeps_the_whole_members_and_names_the_cut_one():
    body = tar_of({"one.jpg": b"1" * 600, "two.jpg": b"2" * 5000})
    cut = body[: 3 * BLOCK + 1000]
    members = read_members(cut, limit=64)
    assert [m.name for m in members] == ["one.jpg", "two.jpg"]
    assert members[0].data == b"1" * 600 and members[0].error is None
    assert members[1].code == "truncated" and "5,000 bytes" in members[1].error


def test_a_damaged_header_after_good_members_ends_the_list_with_where():
    body = bytearray(tar_of({"one.jpg": b"1" * 10, "two.jpg": b"2" * 10}))
    body[2 * BLOCK + 5] ^= 0xFF  # inside the second header's name: its checksum no longer matches
    members = read_members(bytes(body), limit=64)
    assert members[0].data == b"1" * 10
    assert members[1].code == "invalid_tar" and "byte 1,024" in members[1].error and "checksum" in members[1].error


def test_a_damaged_first_header_refuses_the_archive():
    body = bytearray(tar_of({"one.jpg": b"1"}))
    body[0] ^= 0xFF
    with pytest.raises(TarError, match="checksum"):
        read_members(bytes(body), limit=64)
    parsed = parse_request({"body": bytes(body)}, max_images=64)
    assert parsed.error.code == "invalid_tar"


def test_sizes_that_point_past_the_body_never_allocate_them():
    info = tarfile.TarInfo("huge.jpg")
    info.size = 1
    info.pax_headers = {"size": str(10**12)}
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w", format=tarfile.PAX_FORMAT) as archive:
        archive.addfile(info, io.BytesIO(b"x"))
    members = read_members(buffer.getvalue(), limit=64)
    assert members[0].code == "truncated" and "1,000,000,000,000 bytes" in members[0].error


def test_oversized_name_headers_are_not_parsed():
    name = "n" * (70 * 1024)
    body = tar_of({name: b"x"}, fmt=tarfile.GNU_FORMAT)
    members = read_members(body, limit=64)
    assert len(members) == 1 and members[0].code == "invalid_tar" and "name header" in members[0].error


def test_reading_stops_one_past_the_limit_and_the_request_is_refused():
    body = tar_of({f"{i}.jpg": b"x" for i in range(100)})
    assert len(read_members(body, limit=10)) == 11
    parsed = parse_request({"body": body}, max_images=10)
    assert parsed.error.code == "too_many_images" and parsed.error.status == 413


def test_a_tar_body_is_a_list_of_named_images_and_a_plain_body_stays_one_image():
    body = tar_of({"{x}.jpg": b"1", "../../etc/passwd": b"2"})  # a '{' first must not read as JSON
    parsed = parse_request({"body": bytearray(body)}, max_images=10)
    assert not parsed.single and [(i.name, i.data) for i in parsed.images] == [("{x}.jpg", b"1"), ("../../etc/passwd", b"2")]
    assert parse_request({"body": b"\xff\xd8 not a tar"}, max_images=10).single
    only_a_folder = tarfile.TarInfo("photos")
    only_a_folder.type = tarfile.DIRTYPE
    assert parse_request({"body": tar_of({}, extra=[only_a_folder])}, max_images=10).error.code == "no_images"


def test_directories_and_global_headers_are_skipped():
    folder = tarfile.TarInfo("photos")
    folder.type = tarfile.DIRTYPE
    body = tar_of({"photos/a.jpg": b"a"}, extra=[folder], global_headers={"comment": "from a camera"})
    assert body[156:157] == b"g"  # the archive starts with the global header
    assert [(m.name, m.data) for m in read_members(body, limit=64)] == [("photos/a.jpg", b"a")]
