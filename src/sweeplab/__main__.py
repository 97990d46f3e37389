"""``python -m sweeplab``: the same command as ``sweeplab``."""
from sweeplab.cli import run

run()
