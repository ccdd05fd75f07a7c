"""`python -m iceburg_daemon` is the same as the `iceburgd` console script."""

from iceburg_daemon.cli import main

raise SystemExit(main())
