"""python -m raftd: the same as the raftd command."""

import os
import sys

if os.environ.get("RAFTD_SWITCH"):
    sys.setswitchinterval(float(os.environ["RAFTD_SWITCH"]))

from raftd.cli import main

main()
