"""``python -m conceptattention``: the ``conceptattention`` command (see :mod:`conceptattention.cli.main`)."""

from __future__ import annotations

import sys

from conceptattention.cli.main import main


if __name__ == "__main__":
    sys.exit(main())
