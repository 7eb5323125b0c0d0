"""``python -m groupnorm``: the command line (see groupnorm.cli)."""

import sys

from groupnorm.cli import main

if __name__ == "__main__":
    sys.exit(main())
