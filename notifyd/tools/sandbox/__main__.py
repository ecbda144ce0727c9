"""``python -m notifyd.tools.sandbox``: the same command as ``notifyd sandbox``."""

from notifyd.tools.sandbox.cli import sandbox

# Guarded: Faust's discovery (origin ``notifyd``) imports every module of the package.
if __name__ == "__main__":
    sandbox(prog_name="python -m notifyd.tools.sandbox")
