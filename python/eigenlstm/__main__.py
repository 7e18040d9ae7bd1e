"""``python -m eigenlstm``: the same command line as the ``eigenlstm`` console script.

All of it lives in cli/; this file only hands over the exit status.
"""

import sys

from .cli import main

if __name__ == "__main__":
    sys.exit(main())
