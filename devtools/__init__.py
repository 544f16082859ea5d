"""The harness that tests/ and bench/ share; it imports neither of them.

- ``torchserve``: build an archive with build_mar.sh, start TorchServe on free ports
  with serve.sh, wait until it answers an inference, read its keys, stop it.
- ``postgres``: a throwaway PostgreSQL with pgvector on a free port.
- ``images``: awkward images made on the fly (every format, mode and trap), each kind in one place.
- ``dng``: a camera RAW (a DNG with a Bayer mosaic and a JPEG preview) written from a photo.
- ``photos``: real photographs that packages ship, edited copies with known ground truth,
  and the corpus of camera-size JPEGs the throughput benchmarks send.
- ``load``: concurrent clients against one TorchServe, and what they saw.
- ``machine``: what this machine is, for the header of a measurement.
- ``processes``: a TorchServe's frontend and worker processes, their CPU seconds and memory.
- ``ports``, ``weights``: free loopback ports; random weights laid out like a published file.
- ``config``: the settings of config/config.properties and model-config.yaml, read once.
"""

from __future__ import annotations

from pathlib import Path

REPO = Path(__file__).resolve().parent.parent  # the checkout (`make setup` installs it editable)
IMAGES = REPO / "images"  # the photos committed with the repository (images/ATTRIBUTION.md)
CACHE = REPO / ".imgsim"  # generated corpora and caches; ignored by git
