"""`python -m overrided` is the `overrided` command."""

from overrided.cli import main

raise SystemExit(main())
