"""``python -m lens``: see lens.cli."""

import sys

from lens.cli import main

sys.exit(main())
