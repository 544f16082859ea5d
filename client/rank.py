"""Rank a folder of images by similarity to a reference image: `python client/rank.py --help`.

The command lives in client/commands/rank.py (installed as `imgsim-rank` by `make setup`);
this file lets it run from a checkout without installing anything.
"""

import sys
from pathlib import Path

if __package__ in (None, ""):  # run as `python client/rank.py`: the checkout, not client/, is the import root
    sys.path[0] = str(Path(__file__).resolve().parent.parent)

from client.commands.rank import main  # noqa: E402

if __name__ == "__main__":
    sys.exit(main())
