"""A tar archive of images as one request body, read in memory and never extracted.

A tar is the cheapest way to carry many named files in one HTTP body: no encoding, and
the server's frontend passes it on as plain bytes (a multipart body costs it about 4x
the CPU to parse). ``tar cf - *.jpg | curl --data-binary @- ...`` makes one.

Reads what image batches need: regular files with ustar, GNU long-name or PAX path and
size headers; directories are skipped. Links, devices and sparse files become an error
for that member. Member names are labels echoed back, never paths. Written here rather
than with ``tarfile``, whose PAX parsing had CPU-exhaustion bugs in Python versions still
shipped: every header of a hostile archive is checked by these few lines.
"""

from __future__ import annotations

from dataclasses import dataclass

BLOCK = 512
MAGIC_OFFSET = 257
# A PAX header or GNU long name bigger than this is not a file name: refuse, do not parse it.
MAX_HEADER_DATA = 64 * 1024
REGULAR = (b"0", b"\0", b"7")
SKIPPED = (b"5", b"g", b"K")  # directory, PAX global header, GNU long link name
LINKS = (b"1", b"2")
PAX, GNU_LONG_NAME, GNU_SPARSE = b"x", b"L", b"S"


class TarError(ValueError):
    """The body says it is a tar archive but its first header cannot be read."""


@dataclass
class Member:
    name: str | None
    data: bytes = b""
    error: str | None = None  # why this member gives no image
    code: str = ""


def looks_like_tar(body: bytes) -> bool:
    """ustar, POSIX and GNU tar all carry "ustar" at byte 257 of the first header."""
    return len(body) >= BLOCK and body[MAGIC_OFFSET : MAGIC_OFFSET + 5] == b"ustar"


def read_members(body: bytes, limit: int) -> list[Member]:
    """The archive's file members in order, at most ``limit + 1`` (so a caller can tell "too many").

    A damaged header after the first ends the list with an error member saying where.
    """
    members: list[Member] = []
    pos, long_name, pax = 0, None, {}
    while pos + BLOCK <= len(body) and len(members) <= limit:
        header = body[pos : pos + BLOCK]
        if header.count(0) == BLOCK:
            break  # end-of-archive marker
        try:
            name, size, kind = _parse_header(header)
        except ValueError as exc:
            if pos == 0:
                raise TarError(f"the body looks like a tar archive but its first header is damaged ({exc})") from None
            members.append(_damaged(pos, str(exc)))
            break
        if kind not in (PAX, GNU_LONG_NAME):  # those describe the next member, which they precede
            size, name = pax.get("size", size), pax.get("path") or long_name or name
        start, end = pos + BLOCK, pos + BLOCK + size
        if end > len(body):
            members.append(
                Member(name, code="truncated", error=f"the archive ends inside this member: its header says {size:,} "
                       f"bytes, {len(body) - start:,} are in the request")  # fmt: skip
            )
            break
        pos = start + -(-size // BLOCK) * BLOCK
        if kind in (PAX, GNU_LONG_NAME):
            if size > MAX_HEADER_DATA:
                members.append(_damaged(start, f"a {size:,}-byte name header; at most {MAX_HEADER_DATA:,} are read"))
                break
            try:
                pax, long_name = (_parse_pax(body[start:end]), None) if kind == PAX else ({}, _text(body[start:end].rstrip(b"\0")))
            except ValueError as exc:
                members.append(_damaged(start, str(exc)))
                break
            continue
        sparse, pax, long_name = pax.get("sparse", False), {}, None
        if kind in SKIPPED:
            continue
        if kind == GNU_SPARSE or (kind in REGULAR and sparse):
            members.append(Member(name, code="not_a_file", error="a sparse file; archive it without --sparse"))
        elif kind in REGULAR:
            members.append(Member(name, body[start:end]))
        elif kind in LINKS:
            members.append(Member(name, code="not_a_file", error="a link, not a file: put the file itself in the archive"))
        else:
            members.append(Member(name, code="not_a_file", error=f"a tar member of type {kind!r}, not a regular file"))
    return members


def _parse_header(header: bytes) -> tuple[str, int, bytes]:
    stored = int(_field(header[148:156]) or b"-1", 8)
    unsigned = sum(header[:148]) + 8 * 32 + sum(header[156:])
    signed = unsigned - 2 * sum(b for b in header[:148] + header[156:] if b > 127)
    if stored not in (unsigned, signed):
        raise ValueError("header checksum mismatch")
    if header[124] & 0x80:
        raise ValueError("a member of 8 GiB or more")
    size = int(_field(header[124:136]) or b"0", 8)
    if size < 0:
        raise ValueError("a negative size")
    name = header[0:100].split(b"\0", 1)[0]
    if header[MAGIC_OFFSET : MAGIC_OFFSET + 6] == b"ustar\0":  # POSIX: a prefix holds the start of long names
        prefix = header[345:500].split(b"\0", 1)[0]
        name = prefix + b"/" + name if prefix else name
    return _text(name), size, header[156:157]


def _field(raw: bytes) -> bytes:
    return raw.split(b"\0", 1)[0].strip(b" ")


def _parse_pax(data: bytes) -> dict:
    """PAX records "LEN key=value\\n"; keeps path and size, the two that change what is read."""
    found: dict = {}
    pos = 0
    while pos < len(data) and data[pos] != 0:
        space = data.find(b" ", pos, pos + 20)
        if space < 0:
            raise ValueError("malformed PAX header")
        length = int(data[pos:space])
        record = data[space + 1 : pos + length]
        if length <= space - pos or pos + length > len(data) or not record.endswith(b"\n") or b"=" not in record:
            raise ValueError("malformed PAX header")
        key, value = record[:-1].split(b"=", 1)
        if key in (b"path", b"GNU.sparse.name"):  # the second: GNU tar's real name of a sparse file
            found["path"] = _text(value)
        elif key == b"size":
            found["size"] = int(value)
        elif key.startswith(b"GNU.sparse."):  # GNU tar's PAX sparse formats
            found["sparse"] = True
        pos += length
    if found.get("size", 0) < 0:
        raise ValueError("negative size in PAX header")
    return found


def _text(raw: bytes) -> str:
    return raw.decode("utf-8", errors="replace")


def _damaged(pos: int, reason: str) -> Member:
    return Member(None, code="invalid_tar", error=f"damaged tar archive at byte {pos:,} ({reason}); nothing after it is read")
