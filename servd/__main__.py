"""`python -m servd` is `servd`."""

from servd.cli import main

raise SystemExit(main())
