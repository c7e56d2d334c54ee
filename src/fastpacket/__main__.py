"""``python -m fastpacket`` runs the command line."""

import sys

from fastpacket.cli import main

if __name__ == "__main__":  # not when a spawned worker re-imports the main module
    sys.exit(main())
