"""``python -m taskfleet``: the same command line as ``taskfleet``."""

import sys

from taskfleet.cli import main

sys.exit(main())
