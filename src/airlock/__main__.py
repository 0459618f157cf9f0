"""`python -m airlock ...`: the same commands as the `airlock` script (the supervisor uses this)."""

from airlock.cli.main import app

app(prog_name="airlock")
