"""``python -m notifyd.tools.sandbox``: the same command as ``notifyd sandbox``."""

from notifyd.tools.sandbox.cli import sandbox

sandbox(prog_name="python -m notifyd.tools.sandbox")
