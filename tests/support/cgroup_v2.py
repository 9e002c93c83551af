"""Why cgroup v2 cannot enforce limits here: the skip reason of the real v2 tests."""

from __future__ import annotations

import os

from jobkit.core import cgroups, hierarchies

__all__ = ["v2_missing"]


def _words(path: object) -> set[str]:
    try:
        with open(str(path)) as f:
            return set(f.read().split())
    except OSError:
        return set()


def v2_missing() -> str | None:
    """None where a v2 controller is enabled for jobkit's groups; else what is missing."""
    found = hierarchies.current()
    unified = next((h for h in found if h.version == 2), None)
    v1 = sorted({c for h in found if h.version == 1 for c in h.controllers})
    elsewhere = f" (this machine mounts {', '.join(v1)} as cgroup v1 hierarchies)" if v1 else ""
    if unified is None:
        return f"no cgroup2 filesystem is mounted{elsewhere}"
    parent = cgroups.v2_parent(unified.own)
    wanted = set(cgroups.V2_WANTED)
    enabled = _words(parent / "cgroup.subtree_control") & wanted
    if enabled and os.access(parent, os.W_OK):
        return None
    offered = _words(parent / "cgroup.controllers") & wanted
    if not os.access(parent, os.W_OK):
        return (f"jobkit may not create cgroups in {parent} (not root, and no delegated"
                " subtree: see docs/limits.md)")
    return (f"cgroup v2 at {unified.mount_point} enables none of {', '.join(sorted(wanted))}"
            f" for jobkit's groups: {parent}/cgroup.subtree_control lists none, and"
            f" cgroup.controllers offers {', '.join(sorted(offered)) or 'none of them'}"
            f"{elsewhere}")
