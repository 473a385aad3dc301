"""`python -m servd.tools.bench` is `servd bench` (no server dependencies needed)."""

import contextlib
import sys

from servd.tools.bench.command import cli

with contextlib.suppress(KeyboardInterrupt):
    sys.exit(cli())
