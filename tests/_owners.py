"""Test helper: the owner record of a process of this host that has ended."""

from __future__ import annotations

import subprocess
import sys

from autotune.runner import Owner


def dead_owner() -> Owner:
    """A process of this host that has ended (started, recorded, killed and reaped)."""
    child = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    owner = Owner.of(child.pid)
    child.kill()
    child.wait()
    return owner
