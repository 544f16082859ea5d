"""Opens a page in headless Chromium (Debian's package) and reports what rendered."""

from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path

PROBE = """<script>
window.addEventListener('load', () => {
  const imgs = [...document.images];
  const ok = imgs.filter(i => i.complete && i.naturalWidth > 0).length;
  document.body.setAttribute('data-rendered', ok + '/' + imgs.length);
});
</script>"""

FLAGS = [
    "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
    "--disable-background-networking", "--disable-component-update", "--disable-sync",
]  # fmt: skip


def chromium() -> str:
    path = shutil.which("chromium") or shutil.which("chromium-browser")
    assert path, "Chromium is missing: apt-get install chromium (make test does it)"
    return path


def rendered_images(page: Path, profile: Path) -> tuple[int, int]:
    """(images that loaded and have pixels, images on the page)."""
    probe = page.with_name(page.stem + ".probe.html")
    probe.write_text(page.read_text(encoding="utf-8").replace("</body>", PROBE + "</body>"), encoding="utf-8")
    out = subprocess.run(
        [chromium(), *FLAGS, f"--user-data-dir={profile}", "--virtual-time-budget=10000", "--dump-dom", probe.as_uri()],
        capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    found = re.search(r'data-rendered="(\d+)/(\d+)"', out.stdout)
    assert found, f"the page did not finish loading: {out.stderr[-2000:]}"
    return int(found.group(1)), int(found.group(2))


def screenshot(page: Path, png: Path, profile: Path, size: str = "1200,900") -> None:
    subprocess.run(
        [chromium(), *FLAGS, f"--user-data-dir={profile}", f"--window-size={size}", f"--screenshot={png}", page.as_uri()],
        capture_output=True, timeout=120, check=True,
    )  # fmt: skip
