"""raftd: a replicated key-value store on Raft."""
