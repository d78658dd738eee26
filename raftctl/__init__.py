"""raftctl: the command-line client for raftd."""
