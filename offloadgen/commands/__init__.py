"""Subcommands of `offloadgen`; each module has `register(subparsers)` setting `func`."""
