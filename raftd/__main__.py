"""python -m raftd: the same as the raftd command."""

from raftd.cli import main

main()
