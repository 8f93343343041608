#!/usr/bin/python
"""Read-only snapshot of what a core_kernel deploy touches, in one round trip."""

from __future__ import annotations

import base64
import grp
import hashlib
import json
import os
import pwd
import stat

from ansible.module_utils.basic import AnsibleModule

DOCUMENTATION = r"""
module: core_kernel_state
short_description: Snapshot managed files, unit states and group membership (read-only)
description:
  - Records, for each path, whether it exists, its type, sha256, owner, group, mode and link
    target (optionally the content, base64), whether each parent directory exists, the
    load/enabled/active state of each unit, the target of the release symlink and the members
    of a group. Never changes the host.
options:
  paths:
    description: Absolute paths of the managed files.
    type: list
    elements: path
    required: true
  units:
    description: Units whose state is recorded.
    type: list
    elements: str
    default: []
  current:
    description: The release symlink.
    type: path
  group:
    description: Group whose existence and members are recorded.
    type: str
  content:
    description: Return the content (base64) of regular files.
    type: bool
    default: false
  owned_dirs:
    description: >-
      Directories a deploy creates and fills at run time (a log directory); whether each exists
      is recorded, so a rollback can remove one the deploy created, contents and all.
    type: list
    elements: path
    default: []
  users:
    description: Users a deploy may create; whether each exists is recorded.
    type: list
    elements: str
    default: []
  markers:
    description: Paths whose existence alone is recorded (a release's completion marker, a
      deploy in progress).
    type: list
    elements: path
    default: []
  record:
    description: A JSON file (the last proven deploy's record) returned parsed; null when it is
      missing or not a JSON object.
    type: path
author: quantum
"""

EXAMPLES = r"""
- name: Snapshot
  core_kernel_state:
    paths: [/etc/quantum/core_gates.env]
    units: [quantum-execution.service]
    current: /opt/quantum/core-kernel/current
    group: quantum
    content: true
"""

RETURN = r"""
files:
  description: >-
    One record per path (path, existed, type, sha256, owner, group, mode, link_target, backup).
  type: list
  returned: always
dirs:
  description: Parent directory -> exists.
  type: dict
  returned: always
units:
  description: Unit id -> {Id, LoadState, ActiveState, SubState, UnitFileState}.
  type: dict
  returned: always
content:
  description: Path -> base64 content of each existing regular file (when content=true).
  type: dict
  returned: always
current:
  description: existed and target of the release symlink.
  type: dict
  returned: always
group:
  description: name, exists, members.
  type: dict
  returned: always
owned_dirs:
  description: Directory -> exists (a directory, not a file or link, at that path).
  type: dict
  returned: always
markers:
  description: Marker path -> exists.
  type: dict
  returned: always
record:
  description: The record file's JSON object, or null.
  type: dict
  returned: always
users:
  description: User name -> exists.
  type: dict
  returned: always
"""

_UNIT_KEYS = ("Id", "LoadState", "ActiveState", "SubState", "UnitFileState")


def _name(getter, ident):
    try:
        return getter(ident)[0]
    except KeyError:
        return str(ident)


def _record(path, want_content, contents):
    try:
        st = os.lstat(path)
    except FileNotFoundError:
        return {"path": path, "existed": False}
    kind = "link" if stat.S_ISLNK(st.st_mode) else "file" if stat.S_ISREG(st.st_mode) else "other"
    rec = {
        "path": path,
        "existed": True,
        "type": kind,
        "sha256": "",
        "owner": _name(pwd.getpwuid, st.st_uid),
        "group": _name(grp.getgrgid, st.st_gid),
        "mode": f"{stat.S_IMODE(st.st_mode):04o}",
        "size": st.st_size,
        "link_target": os.readlink(path) if kind == "link" else "",
        "backup": path.lstrip("/") if kind == "file" else "",
    }
    if kind == "file":
        with open(path, "rb") as fh:
            data = fh.read()
        rec["sha256"] = hashlib.sha256(data).hexdigest()
        if want_content:
            contents[path] = base64.b64encode(data).decode("ascii")
    return rec


def _units(module, units):
    if not units:
        return {}
    rc, out, err = module.run_command(
        ["systemctl", "show", "--no-pager", "-p", ",".join(_UNIT_KEYS), *units]
    )
    if rc != 0:
        module.fail_json(msg=f"systemctl show failed: {err.strip()}")
    result = {}
    for block in out.strip().split("\n\n"):
        props = dict(line.split("=", 1) for line in block.splitlines() if "=" in line)
        if props.get("Id"):
            result[props["Id"]] = {k: props.get(k, "") for k in _UNIT_KEYS}
    return result


def _read_record(path):
    if not path:
        return None
    try:
        with open(path, "rb") as fh:
            data = json.loads(fh.read(65536))
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) else None


def main():
    module = AnsibleModule(
        argument_spec={
            "paths": {"type": "list", "elements": "path", "required": True},
            "units": {"type": "list", "elements": "str", "default": []},
            "current": {"type": "path"},
            "group": {"type": "str"},
            "content": {"type": "bool", "default": False},
            "owned_dirs": {"type": "list", "elements": "path", "default": []},
            "users": {"type": "list", "elements": "str", "default": []},
            "markers": {"type": "list", "elements": "path", "default": []},
            "record": {"type": "path"},
        },
        supports_check_mode=True,
    )
    p = module.params
    contents = {}
    files = [_record(path, p["content"], contents) for path in p["paths"]]
    dirs = {}
    for path in p["paths"]:
        parent = os.path.dirname(path)
        dirs.setdefault(parent, os.path.isdir(parent))
    current = {"existed": False, "target": ""}
    if p["current"] and os.path.islink(p["current"]):
        current = {"existed": True, "target": os.readlink(p["current"])}
    group = {}
    if p["group"]:
        try:
            entry = grp.getgrnam(p["group"])
            group = {"name": p["group"], "exists": True, "members": sorted(entry.gr_mem)}
        except KeyError:
            group = {"name": p["group"], "exists": False, "members": []}
    users = {}
    for name in p["users"]:
        try:
            pwd.getpwnam(name)
            users[name] = True
        except KeyError:
            users[name] = False
    module.exit_json(
        changed=False,
        owned_dirs={d: os.path.isdir(d) and not os.path.islink(d) for d in p["owned_dirs"]},
        users=users,
        files=files,
        dirs=dirs,
        units=_units(module, p["units"]),
        content=contents,
        current=current,
        group=group,
        markers={m: os.path.lexists(m) for m in p["markers"]},
        record=_read_record(p["record"]),
    )


if __name__ == "__main__":
    main()
