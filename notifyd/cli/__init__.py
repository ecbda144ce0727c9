"""The ``notifyd`` command line: daemon commands and operator commands (``admin``)."""

from notifyd.cli.commands import main

__all__ = ["main"]
