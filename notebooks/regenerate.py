"""``python -m notebooks.regenerate [NAME...]``: re-run the tutorials and store their outputs.

The command readers and contributors know; the machinery lives with the test plumbing,
in :mod:`tests.tutorials.regenerate` (run it from the repository root).
"""

import sys

from tests.tutorials.regenerate import main

if __name__ == "__main__":
    sys.exit(main())
