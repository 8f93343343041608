#!/usr/bin/python
"""Write a set of evidence files under one directory, root's alone, in one round trip."""

from __future__ import annotations

import os
import stat
import tempfile

from ansible.module_utils.basic import AnsibleModule

DOCUMENTATION = r"""
module: core_kernel_evidence
short_description: Write evidence files (0600) and directories (0700) under one directory
description:
  - Each file is written whole (a temporary file renamed over it), mode 0600, owned by the
    user the module runs as; every directory it needs under I(root), and I(root) itself, is
    created mode 0700. A file whose content and mode are already right is left alone.
  - One call instead of one copy task per file: over SSH each task is a round trip.
options:
  root:
    description: The evidence directory (made 0700 if it is not); paths in I(files) and I(dirs)
      are relative to it.
    type: path
    required: true
  files:
    description: Relative path -> text content (UTF-8). May hold the host's journal lines and
      configuration; never logged.
    type: dict
    default: {}
  trailing_newline:
    description: End every file with a newline added after its content.
    type: bool
    default: false
  dirs:
    description: Relative paths of directories to create, or make 0700, even when no file goes
      in them.
    type: list
    elements: str
    default: []
author: quantum
"""

EXAMPLES = r"""
- name: Write after/ and logs/
  core_kernel_evidence:
    root: /var/lib/quantum/evidence/core_kernel_20260101T000000Z
    files:
      after/mode.json: '{"mode": "TESTNET"}'
"""

RETURN = r"""
written:
  description: Relative paths of the files written or re-moded.
  type: list
  returned: always
"""


def _inside(root: str, rel: str) -> str:
    if not rel or rel.startswith("/") or ".." in rel.split("/"):
        raise ValueError(f"{rel!r}: must be a relative path inside the evidence directory")
    return os.path.join(root, rel)


def _make_dirs(module: AnsibleModule, path: str) -> bool:
    """path and whichever of its parents are missing, 0700; True when one was created."""
    missing = []
    while not os.path.isdir(path):
        missing.append(path)
        path = os.path.dirname(path)
    for each in reversed(missing):
        if not module.check_mode:
            os.mkdir(each, 0o700)
            os.chmod(each, 0o700)  # mkdir's mode is masked by the umask
    return bool(missing)


def _private(module: AnsibleModule, path: str) -> bool:
    """An existing directory made 0700 (a directory made elsewhere may be looser)."""
    if stat.S_IMODE(os.stat(path).st_mode) == 0o700:
        return False
    if not module.check_mode:
        os.chmod(path, 0o700)
    return True


def _same(path: str, data: bytes) -> bool:
    try:
        st = os.lstat(path)
    except FileNotFoundError:
        return False
    if not stat.S_ISREG(st.st_mode) or stat.S_IMODE(st.st_mode) != 0o600:
        return False
    with open(path, "rb") as fh:
        return fh.read() == data


def main() -> None:
    module = AnsibleModule(
        argument_spec={
            "root": {"type": "path", "required": True},
            "files": {"type": "dict", "default": {}, "no_log": True},
            "dirs": {"type": "list", "elements": "str", "default": []},
            "trailing_newline": {"type": "bool", "default": False},
        },
        supports_check_mode=True,
    )
    root = os.path.normpath(module.params["root"])
    written = []
    end = "\n" if module.params["trailing_newline"] else ""
    try:
        changed = _make_dirs(module, root)
        changed |= os.path.isdir(root) and _private(module, root)
        for rel in module.params["dirs"]:
            path = _inside(root, rel)
            changed |= _make_dirs(module, path)
            changed |= os.path.isdir(path) and _private(module, path)
        for rel, content in sorted(module.params["files"].items()):
            path = _inside(root, rel)
            data = (str(content) + end).encode("utf-8")
            changed |= _make_dirs(module, os.path.dirname(path))
            if _same(path, data):
                continue
            written.append(rel)
            if module.check_mode:
                continue
            fd, tmp = tempfile.mkstemp(dir=os.path.dirname(path), prefix=".evidence-")
            try:
                with os.fdopen(fd, "wb") as fh:
                    fh.write(data)
                os.chmod(tmp, 0o600)
                os.replace(tmp, path)
            except BaseException:
                os.unlink(tmp)
                raise
    except (OSError, ValueError) as exc:
        module.fail_json(msg=f"evidence under {root}: {exc}", written=written)
    module.exit_json(changed=changed or bool(written), written=written)


if __name__ == "__main__":
    main()
