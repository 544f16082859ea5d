"""Find duplicate images in a folder: `python client/dedup.py --help`.

The command lives in client/commands/dedup.py (installed as `imgsim-dedup` by `make setup`);
this file lets it run from a checkout without installing anything.
"""

import sys
from pathlib import Path

if __package__ in (None, ""):  # run as `python client/dedup.py`: the checkout, not client/, is the import root
    sys.path[0] = str(Path(__file__).resolve().parent.parent)

from client.commands.dedup import main  # noqa: E402

if __name__ == "__main__":
    sys.exit(main())
