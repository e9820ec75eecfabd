"""``python -m diffcal ...``: the same as the ``diffcal`` console script (:func:`diffcal.cli.main`)."""

from __future__ import annotations

import sys

from .cli import main

if __name__ == "__main__":
    sys.exit(main())
