"""Keep a folder's store current (for cron, or --watch): `python client/index.py --help`.

The command lives in client/commands/index.py (installed as `imgsim-index` by `make setup`);
this file lets it run from a checkout without installing anything.
"""

import sys
from pathlib import Path

if __package__ in (None, ""):  # run as `python client/index.py`: the checkout, not client/, is the import root
    sys.path[0] = str(Path(__file__).resolve().parent.parent)

from client.commands.index import main  # noqa: E402

if __name__ == "__main__":
    sys.exit(main())
