"""``python -m bloodlib``: the command line (:mod:`bloodlib.cli`)."""

import sys

from bloodlib.cli import main

sys.exit(main())
