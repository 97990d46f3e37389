"""``python -m sweeplab``: the same command as ``sweeplab``."""
import sys

from sweeplab.cli import main

sys.exit(main())
