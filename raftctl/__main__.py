"""python -m raftctl: the same as the raftctl command (its name in usage lines and shell completion too)."""

from raftctl.cli import main

main(prog_name="raftctl")
