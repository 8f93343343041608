#!/usr/bin/env python3
"""Host state the rollback must restore: every file under the directories a deploy touches
(sha256, owner, group, mode, link target), the load/enabled/active state of the units, and
every user and group.
Run on the lab host by prepare (before the deploy) and by the tests (after the rollback)."""

from __future__ import annotations

import grp
import hashlib
import json
import os
import pwd
import stat
import subprocess
import sys

TREES = [
    "/etc/systemd/system",
    "/etc/quantum",
    "/etc/logrotate.d",
    "/usr/local/bin",
    "/home/qt/quantum_trader/services",
    "/var/log/quantum",
]
PATHS = ["/opt/quantum/core-kernel/current"]
UNITS = [
    "quantum-execution.service",
    "quantum-ai-strategy-router.service",
    "quantum-stream-recover.service",
    "quantum-stream-recover.timer",
]


def record(path: str) -> dict[str, object]:
    try:
        st = os.lstat(path)
    except FileNotFoundError:
        return {"exists": False}
    rec: dict[str, object] = {
        "exists": True,
        "owner": pwd.getpwuid(st.st_uid).pw_name,
        "group": grp.getgrgid(st.st_gid).gr_name,
        "mode": oct(stat.S_IMODE(st.st_mode)),
    }
    if stat.S_ISLNK(st.st_mode):
        rec["link"] = os.readlink(path)
    elif stat.S_ISREG(st.st_mode):
        with open(path, "rb") as fh:
            rec["sha256"] = hashlib.sha256(fh.read()).hexdigest()
    elif stat.S_ISDIR(st.st_mode):
        rec["dir"] = True
    return rec


def main() -> int:
    files: dict[str, object] = {}
    for tree in TREES:
        files[tree] = record(tree)
        for root, dirs, names in os.walk(tree):
            dirs[:] = [d for d in dirs if d != "__pycache__"]
            for name in dirs + names:
                full = os.path.join(root, name)
                files[full] = record(full)
    for path in PATHS:
        files[path] = record(path)
    out = subprocess.run(
        ["systemctl", "show", "--no-pager", "-p", "Id,LoadState,ActiveState,UnitFileState", *UNITS],
        check=True,
        capture_output=True,
        text=True,
    ).stdout
    units = {}
    for block in out.strip().split("\n\n"):
        props = dict(line.split("=", 1) for line in block.splitlines() if "=" in line)
        units[props.get("Id", "?")] = props
    # Every user and group of the host: a deploy may add some, a rollback must take them out.
    groups = {g.gr_name: sorted(g.gr_mem) for g in grp.getgrall()}
    users = {u.pw_name: [u.pw_uid, u.pw_gid, u.pw_dir, u.pw_shell] for u in pwd.getpwall()}
    state = {"files": files, "units": units, "groups": groups, "users": users}
    json.dump(state, sys.stdout, indent=1, sort_keys=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
