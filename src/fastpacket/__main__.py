"""``python -m fastpacket`` runs the command line."""

import sys

from fastpacket.cli import main

sys.exit(main())
