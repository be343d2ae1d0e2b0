"""Subcommands of the `overrided` CLI, one module per area, each with ``register(subparsers)``."""
