"""One HTTP request's inputs to a list of named images, in the order sent.

Four shapes arrive (as TorchServe hands them over: a mapping of part name to value):
- a raw body (``curl -T cat.png``): one part named ``body``; answered with one object;
- a raw body that is a tar archive of images (``tar cf - *.jpg | curl --data-binary @- ...``),
  what client/ sends: answered with a list, one entry per file member, named as in the archive;
- multipart form data: one part per image, named by its form field; answered with a list;
- JSON ``{"images": ["<base64>" | {"name": ..., "data": "<base64>"}, ...]}``; answered with a list.
"""

from __future__ import annotations

import base64
import binascii
import json
from dataclasses import dataclass, field
from typing import Any, Mapping

from .decode import DecodeError
from .tarball import TarError, looks_like_tar, read_members

RAW_BODY_PART = "body"


@dataclass
class ImageInput:
    name: str | None  # the client's name for the image; never used as a path
    data: bytes = b""
    error: DecodeError | None = None  # set when the input itself is unusable


@dataclass
class ParsedRequest:
    images: list[ImageInput] = field(default_factory=list)
    single: bool = False  # raw body: the reply is one object, not a list
    error: DecodeError | None = None  # the whole request is refused


def parse_request(parts: Mapping[str, Any], max_images: int) -> ParsedRequest:
    raw = parts[RAW_BODY_PART] if len(parts) == 1 and RAW_BODY_PART in parts else None
    tar = isinstance(raw, (bytes, bytearray)) and looks_like_tar(raw)
    document = _as_json_document(next(iter(parts.values()))) if len(parts) == 1 and not tar else None
    if tar:
        parsed = _from_tar(bytes(raw), max_images)
    elif document is not None:
        parsed = _from_json(document)
    elif raw is not None:
        return ParsedRequest([ImageInput(None, _as_bytes(raw))], single=True)
    else:
        parsed = ParsedRequest([ImageInput(name, _as_bytes(value)) for name, value in parts.items()])
    if parsed.error is None and len(parsed.images) > max_images:
        parsed = ParsedRequest(
            error=DecodeError(
                "too_many_images",
                f"the request carries {len(parsed.images)} images; the limit is {max_images} per request",
                413,
            )
        )
    if parsed.error is None and not parsed.images:
        parsed.error = DecodeError("no_images", "the request carries no image")
    return parsed


def _from_tar(body: bytes, max_images: int) -> ParsedRequest:
    try:
        members = read_members(body, limit=max_images)
    except TarError as exc:
        return ParsedRequest(error=DecodeError("invalid_tar", str(exc)))
    return ParsedRequest([
        ImageInput(m.name, m.data, DecodeError(m.code, m.error) if m.error else None) for m in members
    ])  # fmt: skip


def _as_bytes(value: Any) -> bytes:
    if isinstance(value, (bytes, bytearray)):
        return bytes(value)
    if isinstance(value, str):
        return value.encode("utf-8")
    return json.dumps(value).encode("utf-8")  # a JSON value where an image was expected


def _as_json_document(value: Any) -> Any | None:
    """A JSON object (already parsed, or bytes that start like one), else None."""
    if isinstance(value, dict):
        return value
    if isinstance(value, (bytes, bytearray, str)):
        text = value.lstrip()[:1]
        if text in (b"{", "{"):
            try:
                return json.loads(value)
            except (ValueError, UnicodeDecodeError) as exc:
                return _InvalidJson(str(exc))
    return None


class _InvalidJson:
    def __init__(self, reason: str):
        self.reason = reason


def _from_json(document: Any) -> ParsedRequest:
    if isinstance(document, _InvalidJson):
        return ParsedRequest(error=DecodeError("invalid_json", f"the body is not valid JSON ({document.reason})"))
    images = document.get("images") if isinstance(document, dict) else None
    if not isinstance(images, list):
        return ParsedRequest(
            error=DecodeError("invalid_json", 'expected {"images": ["<base64>", ...]} or a list of {"name", "data"}')
        )
    return ParsedRequest([_json_item(i, item) for i, item in enumerate(images)])


def _json_item(position: int, item: Any) -> ImageInput:
    name, encoded = None, item
    if isinstance(item, dict):
        name, encoded = item.get("name"), item.get("data")
        name = str(name) if name is not None else None
    if not isinstance(encoded, str):
        return ImageInput(name, error=DecodeError("invalid_base64", f"images[{position}] is not a base64 string"))
    if encoded.startswith("data:") and "," in encoded:
        encoded = encoded.split(",", 1)[1]  # a data URI as browsers make them
    try:
        return ImageInput(name, base64.b64decode(encoded, validate=True))
    except (binascii.Error, ValueError) as exc:
        return ImageInput(name, error=DecodeError("invalid_base64", f"images[{position}] is not valid base64 ({exc})"))
