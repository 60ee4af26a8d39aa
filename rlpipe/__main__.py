"""``python -m rlpipe``: the command line (how the local driver starts a lineage's process)."""

from rlpipe.cli import app

app(prog_name="rlpipe")
