"""Which cluster a node belongs to, as its data directory records it and every peer message carries it.

A name alone cannot tell two clusters apart: the derived name of a map (raftd.config.derived_name) is the
same for everyone's 127.0.0.1 cluster, and a changed address in the map would change it. So the cluster's
first leader also picks a random id and commits it to the log as an ordinary entry; every member applies
it, records it in its data directory and sends it from then on. Traffic between two nodes that both know
an id is refused when the ids differ, whatever the names say; until then, the names are compared.
"""

from __future__ import annotations

import secrets
from dataclasses import dataclass


@dataclass
class Identity:
    name: str  # as the data directory was created with: the YAML map's name, or derived from its first map
    id: str = ""  # the committed random id; "" until this node applied (or received in a snapshot) it

    def refuses(self, name: str, cluster_id: str) -> str | None:
        """Why traffic from a node of (name, cluster_id) is not for this cluster; None when it is."""
        if cluster_id and self.id:
            if cluster_id != self.id:
                return f"traffic from cluster id {cluster_id} reached cluster id {self.id}"
            return None
        if name != self.name:
            return f"traffic for cluster {name!r} reached cluster {self.name!r}"
        return None


def new_cluster_id() -> str:
    """16 hex digits, as etcd prints its cluster ids."""
    return secrets.token_hex(8)
