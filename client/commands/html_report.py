"""Self-contained HTML pages with thumbnails (no external files, opens offline)."""

from __future__ import annotations

import base64
import html
import io
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

from client.image_files import open_image

THUMB_SIDE = 240

STYLE = """
body{font-family:system-ui,sans-serif;margin:24px;background:#fafafa;color:#222}
h1{font-size:20px} h2{font-size:16px;margin-top:28px}
.grid{display:flex;flex-wrap:wrap;gap:14px}
.card{background:#fff;border:1px solid #ddd;border-radius:6px;padding:8px;width:250px}
.card.reference{border:2px solid #2a6ad8}
.card img{display:block;width:240px;height:240px;object-fit:contain;background:#eee}
.name{font-weight:600;word-break:break-all;margin-top:6px}
.meta{font-size:13px;color:#555}
.missing{width:240px;height:240px;display:flex;align-items:center;justify-content:center;background:#eee}
.badge{display:inline-block;font-size:12px;font-weight:700;color:#fff;background:#777;border-radius:4px;padding:2px 6px;margin-top:6px}
.badge-keep{background:#1d7a3a} .badge-move,.badge-moved,.badge-trash,.badge-trashed{background:#b5540b}
.badge-skipped{background:#b3261e}
"""


@dataclass(frozen=True)
class Card:
    path: Path
    title: str
    lines: Sequence[str]
    reference: bool = False
    badge: str = ""  # e.g. "keep" or "moved": a label over the name, coloured by its first word


def thumbnail_uri(path: Path) -> str | None:
    """A small JPEG of the image as a data URI, or None when the file cannot be read."""
    try:
        image = open_image(path, "RGB", THUMB_SIDE).convert("RGB")  # HEIC, AVIF, RAW too: a browser gets a JPEG
        image.thumbnail((THUMB_SIDE, THUMB_SIDE))
        buf = io.BytesIO()
        image.save(buf, "JPEG", quality=80)
    except Exception:  # a report must not fail on one unreadable file
        return None
    return "data:image/jpeg;base64," + base64.b64encode(buf.getvalue()).decode()


def _card(card: Card) -> str:
    uri = thumbnail_uri(card.path)
    title = html.escape(card.title)
    picture = f'<img src="{uri}" alt="{title}">' if uri else '<div class="missing">no preview</div>'
    meta = "".join(f'<div class="meta">{html.escape(line)}</div>' for line in card.lines)
    css = "card reference" if card.reference else "card"
    badge = f'<div class="badge badge-{card.badge.split()[0]}">{html.escape(card.badge)}</div>' if card.badge else ""
    return f'<div class="{css}">{picture}{badge}<div class="name">{title}</div>{meta}</div>'


def render(title: str, sections: Sequence[tuple[str, Sequence[Card]]]) -> str:
    body = "".join(
        f"<h2>{html.escape(heading)}</h2><div class=\"grid\">{''.join(_card(c) for c in cards)}</div>"
        for heading, cards in sections
    )
    return (
        f'<!doctype html><html><head><meta charset="utf-8"><title>{html.escape(title)}</title>'
        f"<style>{STYLE}</style></head><body><h1>{html.escape(title)}</h1>{body}</body></html>"
    )


def write(path: Path, title: str, sections: Sequence[tuple[str, Sequence[Card]]]) -> None:
    path.write_text(render(title, sections), encoding="utf-8")
